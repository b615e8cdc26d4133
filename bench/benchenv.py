"""What every benchmark row records about where it was measured: device, versions, processor, git commit."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from smec_fast.atomic import atomic_write_json
from smec_fast.precision import cpu_identity, describe_cpu
from smec_fast.provenance import git_revision

REPO = Path(__file__).resolve().parents[1]


def git_sha() -> str:
    """HEAD's commit, with "+dirty" when tracked files other than the results have uncommitted changes."""
    return git_revision(REPO, (".", ":!bench/results")) or "unknown"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's kind (model, family and model numbers, torch's capability, whether bf16 is
    native) and the threads torch uses: CPUs of one model name differ in what they can do."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{describe_cpu()}, {torch.get_num_threads()} threads"


def cpu_features() -> dict:
    """The processor features that decide the CPU's precision (smec_fast.precision)."""
    cpu = cpu_identity()
    cpu.pop("bf16_detail")
    return cpu


def versions() -> dict:
    """Python, torch, torchvision, triton and DALI versions (None where not installed)."""
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    for name, module in (("torchvision", "torchvision"), ("triton", "triton"), ("dali", "nvidia.dali")):
        try:
            out[name] = __import__(module, fromlist=["__version__"]).__version__
        except ImportError:
            out[name] = None
    return out


class ResultsFile:
    """A JSON list of result rows that keeps the rows earlier runs (other machines, other commits) left in it:
    `write(rows)` puts this run's rows so far after them, atomically, so a run cut short keeps what it measured.
    A file that is not a list of rows is refused rather than overwritten."""

    def __init__(self, path: Path):
        self.path = path
        self.earlier: list[dict] = []
        if path.exists():
            try:
                self.earlier = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise SystemExit(f"{path}: not a JSON list of rows ({error}); give another --out") from None
            if not isinstance(self.earlier, list):
                raise SystemExit(f"{path}: not a JSON list of rows; give another --out")

    def write(self, rows: list[dict]) -> None:
        atomic_write_json(self.path, self.earlier + rows)

    def describe(self, rows: list[dict]) -> str:
        return f"wrote {len(rows)} rows to {self.path} after its {len(self.earlier)} earlier ones"


__all__ = ["REPO", "ResultsFile", "cpu_features", "device_name", "git_sha", "versions"]
