"""Class activation maps (Zhou et al., CVPR 2016; SMEC eq. 1).

C[b, j, m, n] = sum_k W[j, k] * F[b, k, m, n]: the classifier weight applied at every spatial position of
the last feature map, without bias, ReLU or normalisation.
"""

from __future__ import annotations

import torch


def cam_reference(feat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CAMs of every class at every position.

    Args:
        feat: (B, C, h, w) feature map of the last convolutional layer.
        weight: (K, C) classifier weight.

    Returns:
        (B, K, h, w) class activation maps, in the promoted dtype of the two inputs.
    """
    if feat.dim() != 4 or weight.dim() != 2 or feat.shape[1] != weight.shape[1]:
        raise ValueError(f"cam: expected feat (B, C, h, w) and weight (K, C), got {tuple(feat.shape)} "
                         f"and {tuple(weight.shape)}")
    dtype = torch.promote_types(feat.dtype, weight.dtype)
    return torch.einsum("bchw,kc->bkhw", feat.to(dtype), weight.to(dtype))


cam = cam_reference
