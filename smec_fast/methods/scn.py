"""SCN: the self-cure network (Wang et al., CVPR 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smec_fast.model import FEATURE_CHANNELS

from .base import PixelNoise, TrainingMethod, basic_augmentation, epoch_generator, register


@register
class ScnMethod(TrainingMethod):
    """SCN: Wang, Peng, Yang, Lu and Qiao, "Suppressing Uncertainties for Large-Scale Facial Expression
    Recognition", CVPR 2020 (reference code github.com/kaiwang960112/Self-Cure-Network).

    - Self-attention importance weighting: alpha_i = sigmoid(FC(f_i)) from the pooled features; the loss is
      the cross-entropy of the alpha-weighted logits alpha_i * z_i (logit-weighted CE).
    - Rank regularisation: the batch is split by alpha into the top `beta` fraction (high importance) and
      the rest; L_RR = max(0, margin_rank - (mean_high alpha - mean_low alpha)).
    - Relabelling, from the 0-based epoch `relabel_epoch` on: a sample whose largest predicted probability
      exceeds the probability of its label by more than margin_relabel = 0.2 takes the predicted class as its
      label from then on (written by `end_step`, after the step's backward).
    Loss: CE + L_RR. At test time the plain classifier is used (a positive alpha does not change argmax).
    Every epoch's row counts the labels the epoch changed (`relabel_changed`) and, given the clean labels
    (`clean_labels`, known when the noise was applied to known labels), how many of those changes restored the
    clean label (`relabel_restored`), how many replaced a clean label by another (`relabel_overwrote`), and the
    share of training labels that are wrong after the epoch (`labels_wrong`).

    `official=False` (the shared recipe, the paper's description): the high group is round(beta * B) samples;
    only the low-importance group is relabelled, by the probabilities of the unweighted logits, and a new label
    is used from the next batch that holds the sample; beta 0.7, margin_rank 0.15 (the paper's), relabelling from
    the 11th epoch.

    `official=True`, as its src/train.py trains:
    - the high group is int(beta * B) samples;
    - every sample of the batch may be relabelled, by the softmax of the attention-weighted logits, from its
      10th epoch counted from 1 (`official_recipe` sets relabel_epoch 9);
    - the labels a step reads are the ones of the epoch's start: the code rewrites its data set's label array,
      which the DataLoader's worker processes copied when the epoch began;
    - augmentation: no loader flips; half the images either mirrored or given Gaussian pixel noise (variance
      30 on the 0-255 scale), a quarter each, then random erasing (p 0.5, area 2-25 %);
    - the optimisation of `official_recipe`: Adam at 1e-3, ExponentialLR(0.9) per epoch, batch 64, and
      margin_rank 0.07, which the repository's README advises for batch 64.
    Under torchrun, the importance ranking and the relabelling run within each process's share of the batch.
    """

    name = "scn"
    options = ("scn_beta", "scn_margin_rank", "scn_margin_relabel", "scn_relabel_epoch")
    # src/train.py: 70 epochs, Adam at its default lr 1e-3, ExponentialLR(0.9) per epoch, batch 64; it relabels from
    # its 10th epoch counted from 1 (0-based 9); the repository's README advises the rank margin 0.07 for batch 64
    # (0.15 was the paper's, for batch 1024).
    official_recipe = {"epochs": 70, "lr": 1e-3, "lr_decay": 0.9, "batch_size": 64, "scn_margin_rank": 0.07,
                       "scn_relabel_epoch": 9}
    sample_state = ("labels",)
    labels: torch.Tensor  # (N,) buffers, registered in __init__
    given_labels: torch.Tensor
    epoch_labels: torch.Tensor
    clean_labels: torch.Tensor | None

    def __init__(self, labels: torch.Tensor, beta: float = 0.7, margin_rank: float = 0.15,
                 margin_relabel: float = 0.2, relabel_epoch: int = 10, official: bool = False,
                 clean_labels: torch.Tensor | None = None):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(FEATURE_CHANNELS, 1), nn.Sigmoid())
        self.beta = beta
        self.margin_rank = margin_rank
        self.margin_relabel = margin_relabel
        self.relabel_epoch = relabel_epoch
        self.official = official
        self.loader_hflip = not official
        self.relabelling = False
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (index, labels) the last step chose
        self.register_buffer("labels", labels.clone().long())  # (N,) current labels, relabelled in place
        self.register_buffer("given_labels", labels.clone().long())  # (N,) the labels the run started with
        # (N,) the labels at the epoch's start, which the official recipe's steps read
        self.register_buffer("epoch_labels", labels.clone().long(), persistent=False)
        # (N,) the labels before any noise, for the epoch's relabelling counts only
        self.register_buffer("clean_labels", None if clean_labels is None else clean_labels.clone().long(),
                             persistent=False)
        self.generator = epoch_generator(0, 0, stream=3)
        self.noise = PixelNoise(stream=3)

    @classmethod
    def from_config(cls, cfg, labels, num_classes, noise_rate, clean_labels=None):
        return cls(labels, cfg.scn_beta, cfg.scn_margin_rank, cfg.scn_margin_relabel, cfg.scn_relabel_epoch,
                   official=cfg.recipe == "official", clean_labels=clean_labels)

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.relabelling = epoch >= self.relabel_epoch
        self.epoch_labels.copy_(self.labels)
        self.generator = epoch_generator(seed, epoch, stream=3)
        self.noise.start_epoch(seed, epoch)

    def end_step(self, index: torch.Tensor) -> None:
        # The relabelling is written here, after the backward: the step's forward and backward only read the
        # label buffer, so a compiled step cannot see this step's new labels in its backward.
        if self.pending is not None:
            rows, new_labels = self.pending
            self.labels[rows] = new_labels
            self.pending = None
        super().end_step(index)

    def epoch_stats(self) -> dict[str, float]:
        changed = torch.ne(self.labels, self.epoch_labels)  # (N,) each sample is visited once an epoch
        stats = {"relabel_changed": changed.sum()}
        if self.clean_labels is not None:
            stats["relabel_restored"] = (changed & torch.eq(self.labels, self.clean_labels)).sum()
            stats["relabel_overwrote"] = (changed & torch.eq(self.epoch_labels, self.clean_labels)).sum()
            stats["labels_wrong"] = torch.ne(self.labels, self.clean_labels).float().mean()
        return {name: value.item() for name, value in stats.items()}

    def high_group_size(self, batch: int) -> int:
        n = int(self.beta * batch) if self.official else int(round(self.beta * batch))
        return max(1, min(batch - 1, n))

    def forward(self, model, images, labels, index):
        if self.official:
            images = basic_augmentation(images, self.generator, self.noise)
        logits, feat = model(images)  # (B, K), (B, C, h, w)
        pooled = feat.float().mean((2, 3))  # (B, C)
        alpha = self.attention(pooled).squeeze(1)  # (B,)
        labels = (self.epoch_labels if self.official else self.labels)[index]
        weighted = alpha.unsqueeze(1) * logits.float()
        loss_ce = F.cross_entropy(weighted, labels)
        b = alpha.numel()
        n_high = self.high_group_size(b)
        ranked = alpha.sort(descending=True).values
        loss_rr = F.relu(self.margin_rank - (ranked[:n_high].mean() - ranked[n_high:].mean()))
        changed = (self.labels != self.given_labels).sum()
        if self.relabelling:
            with torch.no_grad():
                if self.official:
                    probs = torch.softmax(weighted, dim=1)
                    considered = torch.ones(b, dtype=torch.bool, device=alpha.device)
                else:
                    probs = torch.softmax(logits.float(), dim=1)
                    considered = torch.zeros(b, dtype=torch.bool, device=alpha.device)
                    considered[alpha.argsort(descending=True)[n_high:]] = True
                top_p, top_k = probs.max(1)
                flip = considered & (top_p - probs.gather(1, labels[:, None]).squeeze(1) > self.margin_relabel)
                current = self.labels[index]
                new_labels = torch.where(flip, top_k, current)
                given = self.given_labels[index]
                changed = changed - (current != given).sum() + (new_labels != given).sum()
            self.pending = (index, new_labels)  # written by end_step
        relabelled = changed.float() / self.labels.numel()  # fraction of the training set, after this step
        return loss_ce + loss_rr, {"ce": loss_ce.detach(), "rr": loss_rr.detach(), "relabelled": relabelled}
