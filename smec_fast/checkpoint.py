"""The files a training run keeps its model in, and reading them back (for resuming, evaluation, prediction,
export and audits alike)."""

from __future__ import annotations

from pathlib import Path

import torch

from smec_fast.errors import CheckpointError, first_line

CHECKPOINT_FORMAT = "smec_fast.checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"  # a run's last finished epoch, with everything resuming needs
SELECTED_FILE = "selected.pt"  # beside checkpoint.pt: the model of the epoch of best validation accuracy


def load_torch_file(path: str | Path, kind: str = "checkpoint file", readable_as: str = "checkpoint"):
    """torch.load a file safely (tensors and plain containers only) onto the CPU; CheckpointError names the
    file when it is a folder, missing, or not readable as `readable_as`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a {kind}")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file raises many kinds of errors
        raise CheckpointError(f"{path}: not a readable {readable_as} ({first_line(err)})") from None


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `train`, checked for its format."""
    state = load_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a smec_fast checkpoint")
    return state
