"""Fused ops of SMEC and their pure-PyTorch references (installed as `smec_fast.kernels`).

Each op has a reference `<op>_reference` that is the single source of truth for tests and benchmarks.
"""

from .cam import cam, cam_reference
from .elr_cross_entropy import elr_cross_entropy, elr_cross_entropy_reference
from .split_merge_consistency import (
    merge_piece_maps,
    split_merge_consistency,
    split_merge_consistency_reference,
)

__all__ = [
    "cam",
    "cam_reference",
    "elr_cross_entropy",
    "elr_cross_entropy_reference",
    "merge_piece_maps",
    "split_merge_consistency",
    "split_merge_consistency_reference",
]
