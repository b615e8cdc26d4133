"""The pytest-benchmark suite (bench/test_bench_*.py): `pytest bench --benchmark-only`.

`--smoke` runs every benchmark at tiny sizes, which CI does once per run so that the suite cannot rot;
the timings of a smoke run mean nothing. The device is $TORCH_DEVICE, else CUDA when present, else the CPU.
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--smoke", action="store_true", help="tiny sizes: check that every benchmark runs")
    parser.addoption("--amp", choices=("auto", "off", "bf16"), default="auto",
                     help="precision of the training-step rounds (default auto: what the trainer picks; on a CPU "
                          "without native bf16 that is fp32, and bf16 here forces emulated bf16)")


def pytest_report_header(config) -> list[str]:
    device = _device()
    if device.type == "cuda":
        return [f"device: {torch.cuda.get_device_name(device)}"]
    from smec_fast.precision import cpu_bf16_support, describe_cpu

    lines = [f"cpu: {describe_cpu()}"]
    if not cpu_bf16_support()[0] and config.getoption("--amp") == "auto":
        lines.append("cpu: no native bf16, so the training steps run in fp32 and no emulated-bf16 rounds are "
                     "timed (--amp bf16 forces them)")
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("--smoke"):  # one untimed-warm-up round each: the run checks, it does not measure
        config.option.benchmark_min_rounds = 1
        config.option.benchmark_max_time = 1e-6
        config.option.benchmark_warmup = False


def pytest_generate_tests(metafunc):
    if "batch" in metafunc.fixturenames:
        smoke = metafunc.config.getoption("--smoke")
        metafunc.parametrize("batch", [2] if smoke else [64, 256] if _device().type == "cuda" else [32, 64])


def _device() -> torch.device:
    return torch.device(os.environ.get("TORCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


@pytest.fixture(scope="session")
def amp(request) -> str:
    return request.config.getoption("--amp")


@pytest.fixture(scope="session")
def smoke(request) -> bool:
    return request.config.getoption("--smoke")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return _device()


def synchronize(device: torch.device) -> None:
    """Wait for the device: every timed function ends with this, so a round measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
