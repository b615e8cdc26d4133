"""RUL: relative uncertainty learning (Zhang, Wang and Deng, NeurIPS 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smec_fast.model import FEATURE_CHANNELS, embedding_branch, feature_map_size

from .base import PixelNoise, TrainingMethod, basic_augmentation, epoch_generator, register


@register
class RulMethod(TrainingMethod):
    """RUL: Zhang, Wang and Deng, "Relative Uncertainty Learning for Facial Expression Recognition",
    NeurIPS 2021 (reference code github.com/zyh-uaiaaaa/Relative-Uncertainty-Learning).

    Every sample gets an uncertainty value; samples are paired with a random permutation of the batch, each
    pair's features are mixed with weights set by the two values, and the classifier must explain the mix with
    both labels (the "add-up" loss). At test time the classifier sees each image's own features, unmixed.
    Under torchrun, samples are paired within each process's share of the batch.

    `official=False` (the shared recipe): the features are the pooled 512-d ones and the classifier the model's
    own `fc`; the branch is an MLP 512-128-1 with softplus giving a confidence c_i; the weights are
    w_i = c_i / (c_i + c_j) and also weight the loss:
        L = mean_i [ w_i CE(fc(w_i f_i + w_j f_j), y_i) + w_j CE(fc(w_i f_i + w_j f_j), y_j) ].

    `official=True`, as its src/rul.py, src/utils.py and src/main.py train:
    - the mixed and classified feature is a 64-d embedding of the whole layer4 map (model.EmbeddingResNet18:
      batch norm without affine, dropout 0.4, flatten, linear to 64, batch norm), classified by a linear 64 -> K;
    - the uncertainty branch has the same structure, its 64 outputs read as log-variances; a sample's value is
      u_i = mean(exp(log-variance)) and its own feature's weight w_i = u_i / (u_i + u_j);
    - the add-up loss weights the two labels 0.5 / 0.5: L = 0.5 CE(fc(mix), y_i) + 0.5 CE(fc(mix), y_j);
    - Adam with the backbone and both branches at lr and the classifier at 10 x lr (2e-4 and 2e-3 in
      `official_recipe`), ExponentialLR(0.9) per epoch, batch 64;
    - augmentation: no loader flips; half the images either mirrored or given Gaussian pixel noise (variance
      30 on the 0-255 scale), a quarter each, then random erasing (p 0.5, area 2-25 %).
    On a CPU under torchrun the branches' BatchNorm1d normalise with each process's share of the batch.
    """

    name = "rul"
    # src/main.py: 60 epochs, Adam, backbone and branches at 2e-4 (the classifier at 10x, param_groups),
    # ExponentialLR(0.9) per epoch, batch 64.
    official_recipe = {"epochs": 60, "lr": 2e-4, "lr_decay": 0.9, "batch_size": 64}
    CLASSIFIER_LR_SCALE = 10.0  # official recipe: the classifier's learning rate over the rest's

    def __init__(self, hidden: int = 128, official: bool = False, image_size: int = 224):
        super().__init__()
        self.official = official
        self.loader_hflip = not official
        if official:
            self.uncertainty = embedding_branch(feature_map_size(image_size))
        else:
            self.uncertainty = nn.Sequential(nn.Linear(FEATURE_CHANNELS, hidden), nn.ReLU(), nn.Linear(hidden, 1),
                                             nn.Softplus())
        self.generator = epoch_generator(0, 0, stream=2)
        self.augment_generator = epoch_generator(0, 0, stream=4)
        self.noise = PixelNoise(stream=4)

    @classmethod
    def from_config(cls, cfg, labels, num_classes, noise_rate, clean_labels=None):
        return cls(official=cfg.recipe == "official", image_size=cfg.image_size)

    @classmethod
    def head(cls, recipe: str) -> str:
        return "embedding" if recipe == "official" else "pooled"

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.generator = epoch_generator(seed, epoch, stream=2)
        self.augment_generator = epoch_generator(seed, epoch, stream=4)
        self.noise.start_epoch(seed, epoch)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        if not self.official:
            return super().param_groups(model, lr)
        head = list(model.get_submodule("fc").parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in head)] + list(self.parameters())
        return [{"params": rest, "lr": lr}, {"params": head, "lr": lr * self.CLASSIFIER_LR_SCALE}]

    def forward(self, model, images, labels, index):
        if self.official:
            return self._official(model, images, labels)
        _, feat = model(images)  # (B, C, h, w)
        pooled = torch.flatten(model.avgpool(feat), 1)  # (B, C)
        confidence = self.uncertainty(pooled.float()).squeeze(1) + 1e-6  # (B,)
        pair = torch.randperm(labels.numel(), generator=self.generator).to(labels.device, non_blocking=True)
        w_self = confidence / (confidence + confidence[pair])  # (B,)
        w_pair = 1.0 - w_self
        mixed = w_self.unsqueeze(1) * pooled + w_pair.unsqueeze(1) * pooled[pair]  # (B, C)
        logits = model.fc(mixed).float()
        loss = (w_self * F.cross_entropy(logits, labels, reduction="none")
                + w_pair * F.cross_entropy(logits, labels[pair], reduction="none")).mean()
        return loss, {"mix": loss.detach(), "confidence": confidence.detach().mean()}

    def _official(self, model, images, labels):
        images = basic_augmentation(images, self.augment_generator, self.noise)
        feat = model.features(images)  # (B, C, h, w)
        embedding = model.embedding(feat).float()  # (B, 64)
        uncertainty = self.uncertainty(feat).float().exp().mean(1)  # (B,)
        pair = torch.randperm(labels.numel(), generator=self.generator).to(labels.device, non_blocking=True)
        total = uncertainty + uncertainty[pair]
        w_self, w_pair = uncertainty / total, uncertainty[pair] / total  # (B,)
        mixed = w_self.unsqueeze(1) * embedding + w_pair.unsqueeze(1) * embedding[pair]  # (B, 64)
        logits = model.fc(mixed).float()
        loss = 0.5 * F.cross_entropy(logits, labels) + 0.5 * F.cross_entropy(logits, labels[pair])
        return loss, {"mix": loss.detach(), "uncertainty": uncertainty.detach().mean()}
