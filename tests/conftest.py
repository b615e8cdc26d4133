"""Shared fixtures. Tests run on the CPU unless TORCH_DEVICE names another device.

Fixtures that train or run something for seconds are session-scoped even where one module uses them: under
pytest-xdist a worker may run another module's test between two of a module's tests, and a module-scoped
fixture is then torn down and set up again. The tests that use one carry an `xdist_group` mark, so that
`--dist loadgroup` runs them on one worker and the fixture is built once, not once per worker."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The shared data folder: $SMEC_SHARED, else ../shared beside the repository, else /work/shared."""
    for candidate in (os.environ.get("SMEC_SHARED"), REPO.parent / "shared", Path("/work/shared")):
        if candidate and (Path(candidate) / "data").is_dir():
            return Path(candidate)
    return None


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow(seconds): takes tens of seconds on a 2-core CPU (about `seconds` on "
                                       "one xdist worker capped to AVX2); slow tests run first, the slowest first")


def pytest_collection_modifyitems(config, items) -> None:
    """The slow tests first, the slowest first; the others keep their order. Under pytest-xdist a worker takes
    the next test as it finishes one, so a slow test that starts last leaves the other workers idle until it ends."""
    def seconds(item) -> float:
        mark = item.get_closest_marker("slow")
        return 0.0 if mark is None else float(mark.kwargs.get("seconds", 1.0))

    items.sort(key=lambda item: -seconds(item))


def pytest_report_header(config) -> list[str]:
    """The CPU kind this session tests on: what decides --amp auto and which hardware paths exist."""
    from smec_fast.precision import describe_cpu, resolve_precision

    chosen = resolve_precision("auto", "auto", "cpu", narrowest_width=64)
    return [f"cpu: {describe_cpu()}", f"cpu: --amp auto trains in {chosen.describe()}"]


def pytest_sessionstart(session) -> None:
    """-q leaves the header out; the CPU lines are printed all the same, since they explain timings and skips."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.option.verbose < 0:
        for line in pytest_report_header(session.config):
            reporter.write_line(line)


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("shared data not found: set SMEC_SHARED to the folder holding data/")
        pytest.skip("shared data not found (set SMEC_SHARED)")
    return path


@pytest.fixture(scope="session")
def fer_subset(tmp_path_factory, shared):
    """A small class-folder dataset: 12 training and 4 test FER2013 faces per class."""
    root = tmp_path_factory.mktemp("fer_subset")
    for split, source, count in (("train", "train", 12), ("test", "val", 4)):
        for class_dir in sorted((shared / "data" / "fer2013" / source).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                (target / image.name).write_bytes(image.read_bytes())
    return root


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def kernel_test_device() -> str:
    """Device of the Triton kernel tests: $TORCH_DEVICE, else CUDA when present, else the CPU."""
    return os.environ.get("TORCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


# Under pytest-xdist (the README's test command runs `-n auto`, a worker per core) each worker computes on one
# thread: workers of several threads each on a 2-core machine spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # for the processes the tests start

# torch.compile's on-disk cache is per test session: inductor's cache key leaves out the CPU capability
# ATen runs with, so kernels cached by a run with ATEN_CPU_CAPABILITY=avx2 (the AVX2-only stand-in) abort
# a later run without it on the same machine.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="smec-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

# On the CPU the Triton kernels run in Triton's interpreter, which has to be switched on before triton
# decorates any kernel, that is before a test module imports smec_fast.kernels.
if kernel_test_device() == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    device = torch.device(kernel_test_device())
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels on the CPU need TRITON_INTERPRET=1")
    return device
