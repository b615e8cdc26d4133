"""Loss modules of SMEC and its baselines; the arithmetic lives in `smec_fast.kernels`.

Both run outside autocast: under bf16 or fp16 autocast the network's features and logits arrive in the
low precision, and the losses promote them to fp32 (the classifier weight and the ELR targets are fp32), as
the fused kernels do by accumulating in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from smec_fast.kernels import elr_cross_entropy, split_merge_consistency
from smec_fast.precision import fp32_region


class ElrCrossEntropy(nn.Module):
    """Cross-entropy plus early-learning regularisation (Liu et al., "Early-Learning Regularization
    Prevents Memorization of Noisy Labels", NeurIPS 2020; reference code github.com/shengliu66/ELR).

    Holds the running targets of all `num_samples` training samples as a buffer, so they travel with the
    module's state dict into checkpoints. Hyperparameters: `beta` (target momentum, 0.7 in ELR's CIFAR-10
    setting) and `lam` (weight of the regulariser, 3).
    """

    def __init__(self, num_samples: int, num_classes: int, beta: float = 0.7, lam: float = 3.0):
        super().__init__()
        self.beta = beta
        self.lam = lam
        self.register_buffer("targets", torch.zeros(num_samples, num_classes))  # (N, K)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        with fp32_region(logits.device.type):
            return elr_cross_entropy(logits, labels, self.targets, index, self.beta, self.lam)


class SplitMergeConsistency(nn.Module):
    """L_con of SMEC (Kim et al., IEEE Access 2023, eq. 5): MSE between the CAM of the original image and
    the merged CAM of its horizontally flipped pieces.

    `detach_weight` keeps the gradient away from the classifier weight, as EAC's code does for its CAM
    consistency; `detach_original` stops it through the original image's features instead.
    """

    def __init__(self, grid: tuple[int, int] = (1, 2), detach_weight: bool = True, detach_original: bool = False):
        super().__init__()
        self.grid = tuple(grid)
        self.detach_weight = detach_weight
        self.detach_original = detach_original

    def forward(self, feat_org: torch.Tensor, feat_pieces: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.detach_original:
            feat_org = feat_org.detach()
        with fp32_region(feat_org.device.type):
            return split_merge_consistency(feat_org, feat_pieces, weight, self.grid, self.detach_weight)
