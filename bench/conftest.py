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
def smoke(request) -> bool:
    return request.config.getoption("--smoke")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return _device()


def synchronize(device: torch.device) -> None:
    """Wait for the device: every timed function ends with this, so a round measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
