"""Fused ops of SMEC and their pure-PyTorch references (installed as `smec_fast.kernels`).

Each op has a reference `<op>_reference` that is the single source of truth for tests and benchmarks, a
Triton implementation `<op>_triton` that runs on any device the tensors are on (CPU only under
TRITON_INTERPRET=1), and the public `<op>`, which calls the op registered as `torch.ops.smec_fast.<op>`
(Triton on CUDA, the reference elsewhere) or, after `set_kernel_backend("reference")`, the reference itself.
"""

from .backend import KERNEL_BACKENDS, get_kernel_backend, kernel_backend, set_kernel_backend
from .cam import cam, cam_reference
from .elr_cross_entropy import elr_cross_entropy, elr_cross_entropy_reference, elr_cross_entropy_triton
from .split_merge_consistency import (
    merge_piece_maps,
    merge_piece_maps_adjoint,
    split_merge_consistency,
    split_merge_consistency_reference,
    split_merge_consistency_triton,
)

__all__ = [
    "KERNEL_BACKENDS",
    "cam",
    "cam_reference",
    "elr_cross_entropy",
    "elr_cross_entropy_reference",
    "elr_cross_entropy_triton",
    "get_kernel_backend",
    "kernel_backend",
    "merge_piece_maps",
    "merge_piece_maps_adjoint",
    "set_kernel_backend",
    "split_merge_consistency",
    "split_merge_consistency_reference",
    "split_merge_consistency_triton",
]
