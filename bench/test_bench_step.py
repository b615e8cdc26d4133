"""pytest-benchmark rounds of one whole training step (forward, backward, Adam) of CE and of SMEC, the way
the trainer runs it on the device: on CUDA compiled, bf16, channels_last, 224 px; on a CPU eagerly in the
precision `--amp auto` picks there (fp32 where bf16 is not native; `--amp bf16` forces it), 64 px. --smoke:
40 px, batch 2. For the plain-vs-eager-vs-compiled
ratio tables, use bench_train.py."""

from __future__ import annotations

import pytest
import torch

from bench_train import Step
from conftest import synchronize
from smec_fast.config import resolve_config
from smec_fast.methods import narrowest_input_width
from smec_fast.precision import resolve_precision


@pytest.mark.parametrize("method", ["ce", "smec"])
def test_training_step(benchmark, method, batch, device, smoke, amp):
    cuda = device.type == "cuda"
    size = 40 if smoke else 224 if cuda else 64
    cfg = resolve_config(cli_values={"method": method, "image_size": size})
    precision = resolve_precision(amp, "auto", device, narrowest_input_width(cfg))
    labels = torch.randint(0, 7, (4 * batch,), generator=torch.Generator().manual_seed(0))
    step = Step(method, "compiled" if cuda and not smoke else "eager", labels, device, precision.amp,
                "on" if precision.channels_last else "off", size)
    batch_tensors = (torch.randn(batch, 3, size, size, device=device), labels[:batch].to(device),
                     torch.arange(batch, device=device))

    def run():
        step(*batch_tensors)
        synchronize(device)

    for _ in range(2):  # compilation and the first steps' allocations stay out of the timed rounds
        run()
    benchmark.group = f"training step b={batch}"
    benchmark.extra_info.update(method=method, image_size=size, amp=precision.amp,
                                channels_last=precision.channels_last, compiled=cuda and not smoke)
    benchmark(run)
