"""SMEC: split and merge consistency regularisation (Kim et al., IEEE Access 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smec_fast.losses import ElrCrossEntropy, SplitMergeConsistency
from smec_fast.grid import describe_split
from smec_fast.split_merge import check_grid, split_and_flip

from .base import TrainingMethod, register


@register
class SmecMethod(TrainingMethod):
    """SMEC (eq. 6): CE + ELR on the original images plus lambda_con * L_con between the original CAM and the
    merged CAM of the flipped pieces; all pieces go through the network in one batched forward.

    Ablations: `grid` (1x2 width, 2x1 height, 2x2 "split 4", 4x4 "split 16"), and `use_elr=False` for
    plain CE inside SMEC (the paper's Fig. 5). `warmup_epochs` ramps lambda_con linearly from 0.
    `piece_bn_stats=False` keeps the pieces' forward from updating the batch-norm running statistics that
    evaluation uses (it still normalises with the pieces' own batch statistics, as in training mode).
    """

    name = "smec"
    options = ("grid", "lambda_con", "con_warmup_epochs", "cam_weight_grad", "detach_original", "piece_bn_stats",
               "cls_loss", "beta", "lambda_elr")
    uses_cam = True
    con_ramp: torch.Tensor  # () buffer: multiplies lambda_con during the warm-up

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

    @staticmethod
    def default_lambda_con(noise_rate: float) -> float:
        """The paper's consistency weight (sec. IV-B): 2 for clean labels, 3 for 10-40 % noise, 5 for 50-60 %."""
        if noise_rate <= 0.0:
            return 2.0
        if noise_rate <= 0.4 + 1e-9:
            return 3.0
        return 5.0

    @classmethod
    def from_config(cls, cfg, labels, num_classes, noise_rate, clean_labels=None):
        lambda_con = cfg.lambda_con if cfg.lambda_con is not None else cls.default_lambda_con(noise_rate)
        return cls(labels.numel(), num_classes, cfg.beta, cfg.lambda_elr, cfg.grid, lambda_con,
                   detach_weight=not cfg.cam_weight_grad, detach_original=cfg.detach_original,
                   use_elr=cfg.cls_loss == "elr", warmup_epochs=cfg.con_warmup_epochs,
                   piece_bn_stats=cfg.piece_bn_stats)

    @classmethod
    def check_config(cls, cfg) -> None:
        check_grid(cfg.image_size, cfg.image_size, cfg.grid)

    @classmethod
    def narrowest_input_width(cls, cfg) -> int:
        return cfg.image_size // cfg.grid[1]

    def describe(self) -> list[str]:
        rows, cols = self.consistency.grid
        return [f"split: {describe_split((rows, cols))}"]

    def sample_beliefs(self):
        return self.elr.targets if self.elr is not None else None

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
