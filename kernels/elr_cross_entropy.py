"""Cross-entropy plus early-learning regularisation (Liu et al., NeurIPS 2020; SMEC eq. 3-4).

ELR keeps a running target t_i per training sample (N x K, indexed by dataset index):

    t_i <- beta * t_i + (1 - beta) * p_i / sum(p_i),  p = clamp(softmax(z), 1e-4, 1 - 1e-4), detached
    L   = CE(z, y) + lam * mean_i log(1 - <t_i, p_i>)

as in ELR's public code (the clamped probabilities enter both the target update and the penalty).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ELR_CLAMP = 1e-4


def elr_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor,
    beta: float,
    lam: float,
) -> torch.Tensor:
    """CE + ELR for one batch; updates `targets[index]` in place.

    Args:
        logits: (B, K) class scores; computed in at least fp32.
        labels: (B,) int64 (possibly noisy) labels.
        targets: (N, K) running ELR targets of the whole training set, updated in place.
        index: (B,) int64 dataset indices of the batch's samples (distinct within a batch).
        beta: target momentum.
        lam: ELR weight.

    Returns:
        Scalar loss CE + lam * ELR.
    """
    if logits.dim() != 2 or targets.dim() != 2 or logits.shape[1] != targets.shape[1]:
        raise ValueError(f"elr_cross_entropy: expected logits (B, K) and targets (N, K), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (B, K)
    ce = F.cross_entropy(z, labels)
    p = torch.softmax(z, dim=1).clamp(ELR_CLAMP, 1.0 - ELR_CLAMP)  # (B, K)
    with torch.no_grad():
        p_detached = p.detach()
        updated = beta * targets[index] + (1.0 - beta) * (p_detached / p_detached.sum(1, keepdim=True)).to(
            targets.dtype)  # (B, K)
        targets[index] = updated
    elr = torch.log(1.0 - (updated.to(p.dtype) * p).sum(dim=1)).mean()
    return ce + lam * elr


elr_cross_entropy = elr_cross_entropy_reference
