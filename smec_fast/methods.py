"""Training objectives: how one batch's loss is computed for each `--method`.

Each method is a module `(model, images, labels, index) -> (loss, parts)`, where `parts` maps a name to a
detached scalar tensor for logging. Nothing here reads a tensor back to the host, so a step never waits
on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smec_fast.config import TrainConfig, default_lambda_con
from smec_fast.losses import ElrCrossEntropy, SplitMergeConsistency
from smec_fast.split_merge import split_and_flip


class CrossEntropyMethod(nn.Module):
    """Plain cross-entropy on the original images (the `ce` baseline)."""

    name = "ce"

    def forward(self, model, images, labels, index):
        logits, _ = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"ce": loss.detach()}


class ElrMethod(nn.Module):
    """Cross-entropy plus ELR (the `elr` baseline, SMEC's classification loss alone; eq. 4)."""

    name = "elr"

    def __init__(self, num_samples: int, num_classes: int, beta: float, lam: float):
        super().__init__()
        self.elr = ElrCrossEntropy(num_samples, num_classes, beta, lam)

    def forward(self, model, images, labels, index):
        logits, _ = model(images)
        loss = self.elr(logits, labels, index)
        return loss, {"cls": loss.detach()}


class SmecMethod(nn.Module):
    """SMEC (eq. 6): CE + ELR on the original images plus lambda_con * L_con between the original CAM and
    the merged CAM of the flipped pieces. All pieces go through the network in one batched forward."""

    name = "smec"

    def __init__(self, num_samples: int, num_classes: int, beta: float, lam: float, grid: tuple[int, int],
                 lambda_con: float, detach_weight: bool = True, detach_original: bool = False):
        super().__init__()
        self.elr = ElrCrossEntropy(num_samples, num_classes, beta, lam)
        self.consistency = SplitMergeConsistency(grid, detach_weight, detach_original)
        self.lambda_con = lambda_con
        # Multiplies lambda_con during a warm-up; a buffer, so changing it neither syncs nor recompiles.
        self.register_buffer("con_ramp", torch.ones(()), persistent=False)

    def set_progress(self, epochs_done: float, warmup_epochs: float) -> None:
        """Ramp the consistency weight linearly from 0 to lambda_con over `warmup_epochs` epochs."""
        self.con_ramp.fill_(1.0 if warmup_epochs <= 0 else min(1.0, epochs_done / warmup_epochs))

    def forward(self, model, images, labels, index):
        logits, feat = model(images)  # (B, K), (B, C, h, w)
        _, feat_pieces = model(split_and_flip(images, self.consistency.grid))  # (P*B, C, h', w')
        loss_cls = self.elr(logits, labels, index)
        loss_con = self.consistency(feat, feat_pieces, model.cam_weight)
        loss = loss_cls + (self.lambda_con * self.con_ramp) * loss_con
        return loss, {"cls": loss_cls.detach(), "con": loss_con.detach()}


def resolve_lambda_con(cfg: TrainConfig, noise_rate: float) -> float:
    """The configured lambda_con, else the paper's choice for the (measured) noise rate."""
    return cfg.lambda_con if cfg.lambda_con is not None else default_lambda_con(noise_rate)


def build_method(cfg: TrainConfig, num_samples: int, num_classes: int, noise_rate: float) -> nn.Module:
    if cfg.method == "ce":
        return CrossEntropyMethod()
    if cfg.method == "elr":
        return ElrMethod(num_samples, num_classes, cfg.beta, cfg.lambda_elr)
    if cfg.method == "smec":
        return SmecMethod(num_samples, num_classes, cfg.beta, cfg.lambda_elr, cfg.grid,
                          resolve_lambda_con(cfg, noise_rate), detach_weight=not cfg.cam_weight_grad,
                          detach_original=cfg.detach_original)
    raise ValueError(f"unknown method {cfg.method!r}")
