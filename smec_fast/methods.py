"""Training objectives: how one batch's loss is computed for each `--method`.

Each method is a module `(model, images, labels, index) -> (loss, parts)`, where `parts` maps a name to a
detached scalar tensor for logging. Nothing here reads a tensor back to the host, so a step never waits on
the device. Methods with their own parameters (SCN's attention head, RUL's uncertainty head) are trained
with the model; methods with per-sample state (ELR targets, SCN's relabelled labels) keep it in buffers, so
it travels with checkpoints. Randomness (EAC's erasing, RUL's pairing) comes from a generator seeded by
(seed, epoch) in `start_epoch`, so resumed runs repeat it exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smec_fast import seeding
from smec_fast.augment import flip_or_noise_choice, gaussian_pixel_noise, mirror, noise_choice, random_erasing
from smec_fast.config import TrainConfig, default_lambda_con
from smec_fast.distributed import shard_of_batch, sync_rows_
from smec_fast.losses import ElrCrossEntropy, SplitMergeConsistency
from smec_fast.model import FEATURE_CHANNELS, embedding_branch, feature_map_size
from smec_fast.split_merge import split_and_flip


class TrainingMethod(nn.Module):
    """Base class: a loss over (model, batch), with hooks the trainer calls."""

    name = ""
    # Buffers of shape (N, ...) that a step updates at its samples' dataset indices.
    sample_state: tuple[str, ...] = ()
    # Whether the training loader mirrors half its images at random; a method that augments otherwise says no.
    loader_hflip = True

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """The optimizer's parameter groups: the model's and the method's own parameters at `lr`."""
        return [{"params": list(model.parameters()) + list(self.parameters()), "lr": lr}]

    def end_step(self, index: torch.Tensor) -> None:
        """Called after every optimizer step: applies per-sample updates the step deferred and, under torchrun,
        gives every process the per-sample updates all processes made this step."""
        for name in self.sample_state:
            sync_rows_(self.get_buffer(name), index)

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Called before every training epoch."""

    def set_progress(self, epochs_done: float) -> None:
        """Called before every step with the fraction of training done, in epochs."""

    def epoch_stats(self) -> dict[str, float]:
        """Called after every training epoch: figures of the epoch, added to its training row (log.csv's
        train_* columns, metrics.json's history) beside the mean loss parts."""
        return {}


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return seeding.stream("method", seed, epoch, stream)


class PixelNoise:
    """Gaussian pixel noise drawn on the images' device from a stream seeded by (seed, epoch, process), created
    at the epoch's first batch (the device is known then). Under torchrun each process draws its own images'
    noise, so the values (not which images get them) differ from a one-process run."""

    def __init__(self, stream: int):
        self.stream = stream
        self.keys = (0, 0)
        self.generator: torch.Generator | None = None

    def start_epoch(self, seed: int, epoch: int) -> None:
        self.keys = (seed, epoch)
        self.generator = None

    def __call__(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        if self.generator is None or self.generator.device != images.device:
            rank = shard_of_batch()[0]
            self.generator = seeding.device_stream("pixel-noise", images.device, *self.keys, self.stream, rank)
        return gaussian_pixel_noise(images, which.to(images.device, non_blocking=True), self.generator)


def basic_augmentation(images: torch.Tensor, generator: torch.Generator, noise: PixelNoise) -> torch.Tensor:
    """SCN's and RUL's training augmentation, in their order: the "basic augmentation" (half the images either
    mirrored or given Gaussian noise, a quarter each), then random erasing (p 0.5, area 2-25 %)."""
    shard = shard_of_batch()
    flip, add_noise = flip_or_noise_choice(images.shape[0], generator, shard=shard)
    images = mirror(images, flip.to(images.device, non_blocking=True))
    images = noise(images, add_noise)
    return random_erasing(images, generator, p=0.5, scale=(0.02, 0.25), shard=shard)


class CrossEntropyMethod(TrainingMethod):
    """Plain cross-entropy on the original images (the `ce` baseline)."""

    name = "ce"

    def forward(self, model, images, labels, index):
        logits, _ = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"ce": loss.detach()}


class ElrMethod(TrainingMethod):
    """Cross-entropy plus ELR (the `elr` baseline, SMEC's classification loss alone; eq. 4)."""

    name = "elr"
    sample_state = ("elr.targets",)

    def __init__(self, num_samples: int, num_classes: int, beta: float, lam: float):
        super().__init__()
        self.elr = ElrCrossEntropy(num_samples, num_classes, beta, lam)

    def forward(self, model, images, labels, index):
        logits, _ = model(images)
        loss = self.elr(logits, labels, index)
        return loss, {"cls": loss.detach()}


class SmecMethod(TrainingMethod):
    """SMEC (Kim et al., IEEE Access 2023, eq. 6): CE + ELR on the original images plus lambda_con * L_con
    between the original CAM and the merged CAM of the flipped pieces; all pieces go through the network
    in one batched forward.

    Ablations: `grid` (1x2 width, 2x1 height, 2x2 "split 4", 4x4 "split 16"), and `use_elr=False` for
    plain CE inside SMEC (the paper's Fig. 5). `warmup_epochs` ramps lambda_con linearly from 0.
    `piece_bn_stats=False` keeps the pieces' forward from updating the batch-norm running statistics that
    evaluation uses (it still normalises with the pieces' own batch statistics, as in training mode).
    """

    name = "smec"

    def __init__(self, num_samples: int, num_classes: int, beta: float, lam: float, grid: tuple[int, int],
                 lambda_con: float, detach_weight: bool = True, detach_original: bool = False,
                 use_elr: bool = True, warmup_epochs: float = 0.0, piece_bn_stats: bool = True):
        super().__init__()
        self.piece_bn_stats = piece_bn_stats
        self.elr = ElrCrossEntropy(num_samples, num_classes, beta, lam) if use_elr else None
        self.sample_state = ("elr.targets",) if use_elr else ()
        self.consistency = SplitMergeConsistency(grid, detach_weight, detach_original)
        self.lambda_con = lambda_con
        self.warmup_epochs = warmup_epochs
        # Multiplies lambda_con during the warm-up; a buffer, so changing it neither syncs nor recompiles.
        self.register_buffer("con_ramp", torch.ones(()), persistent=False)

    def set_progress(self, epochs_done: float) -> None:
        ramp = 1.0 if self.warmup_epochs <= 0 else min(1.0, epochs_done / self.warmup_epochs)
        self.con_ramp.fill_(ramp)

    def forward(self, model, images, labels, index):
        logits, feat = model(images)  # (B, K), (B, C, h, w)
        pieces = split_and_flip(images, self.consistency.grid)
        if self.piece_bn_stats:
            _, feat_pieces = model(pieces)  # (P*B, C, h', w')
        else:  # the forward updates copies of the buffers, which are then dropped
            buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
            _, feat_pieces = torch.func.functional_call(model, buffers, (pieces,), strict=False)
        if self.elr is not None:
            loss_cls = self.elr(logits, labels, index)
        else:
            loss_cls = F.cross_entropy(logits.float(), labels)
        loss_con = self.consistency(feat, feat_pieces, model.cam_weight)
        loss = loss_cls + (self.lambda_con * self.con_ramp) * loss_con
        return loss, {"cls": loss_cls.detach(), "con": loss_con.detach()}


class EacMethod(TrainingMethod):
    """EAC: Zhang, Wang, Ling and Deng, "Learn From All: Erasing Attention Consistency for Noisy Label
    Facial Expression Recognition", ECCV 2022 (reference code github.com/zyh-uaiaaaa/Erasing-Attention-
    Consistency).

    The erased image and a horizontal flip both go through the network (two forwards, each with its own
    batch-norm statistics), and the CAM of every class of the flipped view, flipped back, must match the CAM of
    the main view (MSE over B x K x h x w, classifier weight detached). Loss: CE on the main view + lambda *
    L_flip, lambda = 5. Erasing: probability 0.5, area 2-25 % of the image, aspect 0.3-3.3 (torchvision's
    RandomErasing with `scale=(0.02, 0.25)`), the erased pixels set to the mean colour. The flip consistency is
    SMEC's L_con with a 1x1 grid.

    `official=False` (the shared recipe): each image is erased once and its flip is the mirror of the erased
    image; the loader's random flips stay on.

    `official=True`, as its src/dataset.py and src/main.py train:
    - no random flips in the loader (its transforms have none);
    - the main view gets Gaussian pixel noise (variance 30 on the 0-255 scale) with probability 0.5, then
      erasing;
    - with noisy labels (`noisy_labels`: any label file other than the clean list; here, any noise applied), the
      flipped view is the mirror of the image before noise and erasing, erased independently of the main view;
      with clean labels it is the mirror of the noised, erased main view;
    - the optimisation of config.RECIPES["eac"]: Adam, ExponentialLR(0.9) per epoch, batch 32, and lr 2e-4,
      which the repository's README gives for a ResNet-18 backbone (its code's 1e-4 is for its ResNet-50).
    Under torchrun, which images are noised and erased is drawn for the global batch; the noise values are
    drawn per process.
    """

    name = "eac"

    def __init__(self, lambda_flip: float = 5.0, erase_p: float = 0.5, erase_scale=(0.02, 0.25),
                 official: bool = False, noisy_labels: bool = True):
        super().__init__()
        self.consistency = SplitMergeConsistency((1, 1), detach_weight=True)
        self.lambda_flip = lambda_flip
        self.erase_p = erase_p
        self.erase_scale = tuple(erase_scale)
        self.official = official
        self.noisy_labels = noisy_labels
        self.loader_hflip = not official
        self.generator = _epoch_generator(0, 0, stream=1)
        self.noise = PixelNoise(stream=1)

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.generator = _epoch_generator(seed, epoch, stream=1)
        self.noise.start_epoch(seed, epoch)

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(main view, flipped view) of a batch, as the recipe builds them."""
        shard = shard_of_batch()
        erase = dict(p=self.erase_p, scale=self.erase_scale, shard=shard)
        if not self.official:
            erased = random_erasing(images, self.generator, **erase)
            return erased, split_and_flip(erased, (1, 1))
        main = self.noise(images, noise_choice(images.shape[0], self.generator, shard=shard))
        main = random_erasing(main, self.generator, **erase)
        if not self.noisy_labels:
            return main, main.flip(-1)
        return main, random_erasing(images.flip(-1), self.generator, **erase)

    def forward(self, model, images, labels, index):
        main, flipped = self.views(images)
        logits, feat = model(main)
        _, feat_flip = model(flipped)
        loss_ce = F.cross_entropy(logits.float(), labels)
        loss_flip = self.consistency(feat, feat_flip, model.cam_weight)
        loss = loss_ce + self.lambda_flip * loss_flip
        return loss, {"ce": loss_ce.detach(), "flip": loss_flip.detach()}


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
      10th epoch counted from 1 (config.RECIPES["scn"] sets relabel_epoch 9);
    - the labels a step reads are the ones of the epoch's start: the code rewrites its data set's label array,
      which the DataLoader's worker processes copied when the epoch began;
    - augmentation: no loader flips; half the images either mirrored or given Gaussian pixel noise (variance
      30 on the 0-255 scale), a quarter each, then random erasing (p 0.5, area 2-25 %);
    - the optimisation of config.RECIPES["scn"]: Adam at 1e-3, ExponentialLR(0.9) per epoch, batch 64, and
      margin_rank 0.07, which the repository's README advises for batch 64.
    Under torchrun, the importance ranking and the relabelling run within each process's share of the batch.
    """

    name = "scn"
    sample_state = ("labels",)

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
        self.generator = _epoch_generator(0, 0, stream=3)
        self.noise = PixelNoise(stream=3)

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.relabelling = epoch >= self.relabel_epoch
        self.epoch_labels.copy_(self.labels)
        self.generator = _epoch_generator(seed, epoch, stream=3)
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
        changed = self.labels != self.epoch_labels  # (N,) each sample is visited once an epoch
        stats = {"relabel_changed": changed.sum()}
        if self.clean_labels is not None:
            stats["relabel_restored"] = (changed & (self.labels == self.clean_labels)).sum()
            stats["relabel_overwrote"] = (changed & (self.epoch_labels == self.clean_labels)).sum()
            stats["labels_wrong"] = (self.labels != self.clean_labels).float().mean()
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
      config.RECIPES["rul"]), ExponentialLR(0.9) per epoch, batch 64;
    - augmentation: no loader flips; half the images either mirrored or given Gaussian pixel noise (variance
      30 on the 0-255 scale), a quarter each, then random erasing (p 0.5, area 2-25 %).
    On a CPU under torchrun the branches' BatchNorm1d normalise with each process's share of the batch.
    """

    name = "rul"
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
        self.generator = _epoch_generator(0, 0, stream=2)
        self.augment_generator = _epoch_generator(0, 0, stream=4)
        self.noise = PixelNoise(stream=4)

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.generator = _epoch_generator(seed, epoch, stream=2)
        self.augment_generator = _epoch_generator(seed, epoch, stream=4)
        self.noise.start_epoch(seed, epoch)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        if not self.official:
            return super().param_groups(model, lr)
        head = list(model.fc.parameters())
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


def resolve_lambda_con(cfg: TrainConfig, noise_rate: float) -> float:
    """The configured lambda_con, else the paper's choice for the (measured) noise rate."""
    return cfg.lambda_con if cfg.lambda_con is not None else default_lambda_con(noise_rate)


def narrowest_input_width(cfg: TrainConfig) -> int:
    """Width in pixels of the narrowest image the network sees in a training step: SMEC's pieces, else the
    whole image (EAC's flip and the others keep it whole)."""
    return cfg.image_size // cfg.grid[1] if cfg.method == "smec" else cfg.image_size


def build_method(cfg: TrainConfig, labels: torch.Tensor, num_classes: int, noise_rate: float,
                 clean_labels: torch.Tensor | None = None) -> TrainingMethod:
    """The objective of `cfg.method` for a training split with these (possibly noisy) labels; `clean_labels`, where
    known, only feeds figures a method reports (SCN's relabelling counts)."""
    n = labels.numel()
    if cfg.method == "ce":
        return CrossEntropyMethod()
    if cfg.method == "elr":
        return ElrMethod(n, num_classes, cfg.beta, cfg.lambda_elr)
    if cfg.method == "smec":
        return SmecMethod(n, num_classes, cfg.beta, cfg.lambda_elr, cfg.grid, resolve_lambda_con(cfg, noise_rate),
                          detach_weight=not cfg.cam_weight_grad, detach_original=cfg.detach_original,
                          use_elr=cfg.cls_loss == "elr", warmup_epochs=cfg.con_warmup_epochs,
                          piece_bn_stats=cfg.piece_bn_stats)
    official = cfg.recipe == "official"
    if cfg.method == "eac":
        return EacMethod(cfg.eac_lambda, official=official, noisy_labels=noise_rate > 0)
    if cfg.method == "scn":
        return ScnMethod(labels, cfg.scn_beta, cfg.scn_margin_rank, cfg.scn_margin_relabel, cfg.scn_relabel_epoch,
                         official=official, clean_labels=clean_labels)
    if cfg.method == "rul":
        return RulMethod(official=official, image_size=cfg.image_size)
    raise ValueError(f"unknown method {cfg.method!r}")
