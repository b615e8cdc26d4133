"""pytest-benchmark rounds of the fused ops, forward and backward: the eager reference, torch.compile of it,
and the Triton kernels (CUDA only). The inputs are bench_kernels.py's: SMEC's 224 px layer4 maps (1x2
pieces, 512 channels, 7 classes) and RAF-DB's 12,271 ELR rows; --smoke shrinks them. For ratio tables
with bytes/s against the copy bandwidth, use bench_kernels.py."""

from __future__ import annotations

import pytest
import torch

from bench_kernels import DTYPES, consistency_case, elr_case, mode_fn, provider_fn
from conftest import synchronize
from smec_fast.kernels import kernel_backend


@pytest.mark.parametrize("provider", ["torch", "compile", "triton"])
@pytest.mark.parametrize("op", ["consistency", "elr"])
def test_fused_op(benchmark, op, provider, batch, device, smoke):
    if provider == "triton" and device.type != "cuda":
        pytest.skip("the Triton kernels run on the CPU only in the interpreter, far too slow to time")
    torch.manual_seed(0)
    dtype = DTYPES["bf16" if device.type == "cuda" else "fp32"]
    if op == "consistency":
        channels, size = (16, 64) if smoke else (512, 224)
        config, inputs, leaves, fused, reference, _ = consistency_case(batch, channels, 7, size, (1, 2), dtype, device)
    else:
        config, inputs, leaves, fused, reference, _ = elr_case(batch, 7, dtype, device)
    step = mode_fn("fwd+bwd", provider_fn(provider, fused, reference), inputs, leaves)

    def run():
        with kernel_backend("fused"):
            step()
        synchronize(device)

    run()  # compiles the compiled provider outside the timed rounds
    benchmark.group = f"{op} fwd+bwd b={batch}"
    benchmark.extra_info.update(config)
    benchmark(run)
