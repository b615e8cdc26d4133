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
from smec_fast.augment import random_erasing
from smec_fast.config import TrainConfig, default_lambda_con
from smec_fast.distributed import shard_of_batch, sync_rows_
from smec_fast.losses import ElrCrossEntropy, SplitMergeConsistency
from smec_fast.model import FEATURE_CHANNELS
from smec_fast.split_merge import split_and_flip


class TrainingMethod(nn.Module):
    """Base class: a loss over (model, batch), with hooks the trainer calls."""

    name = ""
    # Buffers of shape (N, ...) that a step updates at its samples' dataset indices.
    sample_state: tuple[str, ...] = ()

    def end_step(self, index: torch.Tensor) -> None:
        """Called after every optimizer step: applies per-sample updates the step deferred and, under torchrun,
        gives every process the per-sample updates all processes made this step."""
        for name in self.sample_state:
            sync_rows_(self.get_buffer(name), index)

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Called before every training epoch."""

    def set_progress(self, epochs_done: float) -> None:
        """Called before every step with the fraction of training done, in epochs."""


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return seeding.stream("method", seed, epoch, stream)


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

    Each training image is randomly erased (probability 0.5, area 2-25 % of the image, aspect 0.3-3.3, as
    torchvision's RandomErasing with `scale=(0.02, 0.25)` in EAC's transforms); the erased image and its
    horizontal flip both go through the network, and the CAM of the flipped image, flipped back, must match
    the CAM of the erased image (MSE, classifier weight detached). Loss: CE + lambda * L_flip, lambda = 5.
    The flip consistency is SMEC's L_con with a 1x1 grid.
    """

    name = "eac"

    def __init__(self, lambda_flip: float = 5.0, erase_p: float = 0.5, erase_scale=(0.02, 0.25)):
        super().__init__()
        self.consistency = SplitMergeConsistency((1, 1), detach_weight=True)
        self.lambda_flip = lambda_flip
        self.erase_p = erase_p
        self.erase_scale = tuple(erase_scale)
        self.generator = _epoch_generator(0, 0, stream=1)

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.generator = _epoch_generator(seed, epoch, stream=1)

    def forward(self, model, images, labels, index):
        erased = random_erasing(images, self.generator, p=self.erase_p, scale=self.erase_scale,
                                shard=shard_of_batch())
        logits, feat = model(erased)
        _, feat_flip = model(split_and_flip(erased, (1, 1)))
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
      the rest; L_RR = max(0, margin_rank - (mean_high alpha - mean_low alpha)), margin_rank = 0.15.
    - Relabelling, from epoch `relabel_epoch` on: a low-importance sample whose largest predicted
      probability exceeds the probability of its label by more than margin_relabel = 0.2 takes the
      predicted class as its label from then on (written by `end_step`, after the step's backward).
      beta = 0.7.
    Loss: CE + L_RR. At test time the plain classifier is used (a positive alpha does not change argmax).
    Under torchrun, the importance ranking runs within each process's share of the batch.
    """

    name = "scn"
    sample_state = ("labels",)

    def __init__(self, labels: torch.Tensor, beta: float = 0.7, margin_rank: float = 0.15,
                 margin_relabel: float = 0.2, relabel_epoch: int = 10):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(FEATURE_CHANNELS, 1), nn.Sigmoid())
        self.beta = beta
        self.margin_rank = margin_rank
        self.margin_relabel = margin_relabel
        self.relabel_epoch = relabel_epoch
        self.relabelling = False
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (index, labels) the last step chose
        self.register_buffer("labels", labels.clone().long())  # (N,) current labels, relabelled in place
        self.register_buffer("given_labels", labels.clone().long())  # (N,) the labels the run started with

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.relabelling = epoch >= self.relabel_epoch

    def end_step(self, index: torch.Tensor) -> None:
        # The relabelling is written here, after the backward: the step's forward and backward only read the
        # label buffer, so a compiled step cannot see this step's new labels in its backward.
        if self.pending is not None:
            rows, new_labels = self.pending
            self.labels[rows] = new_labels
            self.pending = None
        super().end_step(index)

    def forward(self, model, images, labels, index):
        logits, feat = model(images)  # (B, K), (B, C, h, w)
        pooled = feat.float().mean((2, 3))  # (B, C)
        alpha = self.attention(pooled).squeeze(1)  # (B,)
        labels = self.labels[index]
        loss_ce = F.cross_entropy(alpha.unsqueeze(1) * logits.float(), labels)
        b = alpha.numel()
        n_high = max(1, min(b - 1, int(round(self.beta * b))))
        ranked = alpha.sort(descending=True).values
        loss_rr = F.relu(self.margin_rank - (ranked[:n_high].mean() - ranked[n_high:].mean()))
        changed = (self.labels != self.given_labels).sum()
        if self.relabelling:
            with torch.no_grad():
                probs = torch.softmax(logits.float(), dim=1)
                low = torch.zeros(b, dtype=torch.bool, device=alpha.device)
                low[alpha.argsort(descending=True)[n_high:]] = True
                top_p, top_k = probs.max(1)
                flip = low & (top_p - probs.gather(1, labels[:, None]).squeeze(1) > self.margin_relabel)
                new_labels = torch.where(flip, top_k, labels)
                given = self.given_labels[index]
                changed = changed - (labels != given).sum() + (new_labels != given).sum()
            self.pending = (index, new_labels)  # written by end_step
        relabelled = changed.float() / self.labels.numel()  # fraction of the training set, after this step
        return loss_ce + loss_rr, {"ce": loss_ce.detach(), "rr": loss_rr.detach(), "relabelled": relabelled}


class RulMethod(TrainingMethod):
    """RUL: Zhang, Wang and Deng, "Relative Uncertainty Learning for Facial Expression Recognition",
    NeurIPS 2021 (reference code github.com/zyh-uaiaaaa/Relative-Uncertainty-Learning).

    An uncertainty branch gives every sample a positive confidence c_i = softplus(MLP(f_i)) (the inverse
    of its uncertainty). Samples are paired with a random permutation of the batch; each pair's pooled
    features are mixed with weights set by their relative uncertainty, w_i = c_i / (c_i + c_j), and the
    classifier must explain the mix with both labels (the "add-up" loss):
        L = mean_i [ w_i CE(fc(w_i f_i + w_j f_j), y_i) + w_j CE(fc(w_i f_i + w_j f_j), y_j) ].
    A sample that is hard to fit lowers its confidence and so its weight. The branch is an MLP 512-128-1.
    At test time the plain classifier is used on each image's own features. Under torchrun, samples are
    paired within each process's share of the batch.
    """

    name = "rul"

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.uncertainty = nn.Sequential(nn.Linear(FEATURE_CHANNELS, hidden), nn.ReLU(), nn.Linear(hidden, 1),
                                         nn.Softplus())
        self.generator = _epoch_generator(0, 0, stream=2)

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.generator = _epoch_generator(seed, epoch, stream=2)

    def forward(self, model, images, labels, index):
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


def resolve_lambda_con(cfg: TrainConfig, noise_rate: float) -> float:
    """The configured lambda_con, else the paper's choice for the (measured) noise rate."""
    return cfg.lambda_con if cfg.lambda_con is not None else default_lambda_con(noise_rate)


def narrowest_input_width(cfg: TrainConfig) -> int:
    """Width in pixels of the narrowest image the network sees in a training step: SMEC's pieces, else the
    whole image (EAC's flip and the others keep it whole)."""
    return cfg.image_size // cfg.grid[1] if cfg.method == "smec" else cfg.image_size


def build_method(cfg: TrainConfig, labels: torch.Tensor, num_classes: int, noise_rate: float) -> TrainingMethod:
    """The objective of `cfg.method` for a training split with these (possibly noisy) labels."""
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
    if cfg.method == "eac":
        return EacMethod(cfg.eac_lambda)
    if cfg.method == "scn":
        return ScnMethod(labels, cfg.scn_beta, cfg.scn_margin_rank, cfg.scn_margin_relabel, cfg.scn_relabel_epoch)
    if cfg.method == "rul":
        return RulMethod()
    raise ValueError(f"unknown method {cfg.method!r}")
