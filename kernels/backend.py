"""Which implementation the public ops (`split_merge_consistency`, `elr_cross_entropy`) run.

- "fused" (default): the registered `torch.ops.smec_fast.*` ops. On CUDA they launch the Triton kernels; on
  every other device (and for float64 inputs) they run the pure-PyTorch reference, so one call site serves
  CUDA, CPU and `torch.compile(fullgraph=True)`.
- "reference": the pure-PyTorch references, called directly (plain autograd, no custom op).

The choice is read at call time, so `set_kernel_backend` takes effect for modules built before it was called.
Under `torch.compile` the value is guarded: changing it recompiles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

KERNEL_BACKENDS = ("fused", "reference")

_backend = "fused"


def set_kernel_backend(name: str) -> None:
    """Select "fused" (registered ops, Triton on CUDA) or "reference" (pure PyTorch) for the public ops."""
    global _backend
    if name not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(KERNEL_BACKENDS)}")
    _backend = name


def get_kernel_backend() -> str:
    """The backend the public ops use now: "fused" or "reference"."""
    return _backend


@contextlib.contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Use backend `name` inside the `with` block and restore the previous one afterwards."""
    previous = get_kernel_backend()
    set_kernel_backend(name)
    try:
        yield
    finally:
        set_kernel_backend(previous)
