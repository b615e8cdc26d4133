"""RAF-DB basic emotion set (Li et al., CVPR 2017).

Layout (DESIGN.md): `basic/EmoLabel/list_patition_label.txt` holds `train_00001.jpg 5` lines with 1-based
labels in the order Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral; the aligned 100 x 100
faces are `basic/Image/aligned/train_00001_aligned.jpg`. The training split is the `train_*` lines
(12,271 images), the test split the `test_*` lines (3,068).
"""

from __future__ import annotations

from pathlib import Path

import torch

from smec_fast.errors import DataError

from .noise import parse_label_file
from .split import ImageSplit

CLASS_NAMES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
LABEL_FILE = Path("basic/EmoLabel/list_patition_label.txt")
ALIGNED_DIR = Path("basic/Image/aligned")


def rafdb_root(path: str | Path) -> Path:
    """The folder holding `basic/`; `path` may be that folder or `basic/` itself."""
    path = Path(path)
    if (path / LABEL_FILE).is_file():
        return path
    if path.name == "basic" and (path.parent / LABEL_FILE).is_file():
        return path.parent
    if not path.exists():
        raise DataError(f"RAF-DB root {path} does not exist")
    raise DataError(f"{path} is not a RAF-DB folder: {path / LABEL_FILE} not found")


def aligned_image_path(root: Path, name: str) -> Path:
    stem = Path(name).stem
    return root / ALIGNED_DIR / f"{stem}_aligned.jpg"


def load_rafdb(path: str | Path, split: str) -> ImageSplit:
    """The `train` or `test` split of RAF-DB's aligned images; every listed image must exist."""
    if split not in ("train", "test"):
        raise ValueError(f"RAF-DB split must be train or test, got {split!r}")
    root = rafdb_root(path)
    label_file = root / LABEL_FILE
    entries = [e for e in parse_label_file(label_file, len(CLASS_NAMES)) if e.name.startswith(f"{split}_")]
    if not entries:
        raise DataError(f"{label_file}: no {split}_* lines")
    paths = [aligned_image_path(root, e.name) for e in entries]
    missing = [(e, p) for e, p in zip(entries, paths) if not p.is_file()]
    if missing:
        entry, image = missing[0]
        raise DataError(f"{label_file} line {entry.lineno}: image {image} not found"
                        + (f" ({len(missing)} of {len(entries)} {split} images are missing)" if len(missing) > 1 else ""))
    return ImageSplit(
        names=[e.name for e in entries],
        labels=torch.tensor([e.label for e in entries], dtype=torch.long),
        class_names=CLASS_NAMES,
        paths=paths,
    )
