"""RAF-DB basic emotion set (Li et al., CVPR 2017).

Layout (docs/data.md): `basic/EmoLabel/list_patition_label.txt` holds `train_00001.jpg 5` lines with 1-based
labels in the order Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral; the aligned 100 x 100
faces are `basic/Image/aligned/train_00001_aligned.jpg`, the original photos
`basic/Image/original/train_00001.jpg` with five landmarks in
`basic/Annotation/manual/train_00001_manu_attri.txt` (or `auto/train_00001_auto_attri.txt`): one `x y` line
each for the left eye, right eye, nose tip, left mouth corner and right mouth corner, "left" meaning the
image's left; further lines (gender, race, age) are ignored. The loaders align original photos (align.py).
The training split is the `train_*` lines (12,271 images), the test split the `test_*` lines (3,068).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from smec_fast.errors import DataError

from .noise import parse_label_file
from .image_split import ImageSplit

log = logging.getLogger(__name__)

CLASS_NAMES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
LABEL_FILE = Path("basic/EmoLabel/list_patition_label.txt")
ALIGNED_DIR = Path("basic/Image/aligned")
ORIGINAL_DIR = Path("basic/Image/original")
ANNOTATION_DIR = Path("basic/Annotation")
LANDMARK_SUFFIX = {"manual": "manu", "auto": "auto"}


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


def landmark_path(root: Path, name: str, source: str = "manual") -> Path:
    """`basic/Annotation/manual/train_00001_manu_attri.txt` (or the `auto` one) of image `train_00001.jpg`."""
    if source not in LANDMARK_SUFFIX:
        raise ValueError(f"landmark source must be manual or auto, got {source!r}")
    return root / ANNOTATION_DIR / source / f"{Path(name).stem}_{LANDMARK_SUFFIX[source]}_attri.txt"


def read_landmarks(path: Path) -> torch.Tensor:
    """(5, 2) float32 landmarks from the first five `x y` lines of a RAF-DB annotation file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"landmark file {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"landmark file {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    points = []
    for lineno, line in enumerate(lines[:5], start=1):
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
            if not (np.isfinite(x) and np.isfinite(y)):
                raise ValueError
        except ValueError:
            raise DataError(f"{path} line {lineno}: expected 'x y' landmark coordinates, "
                            f"got {line.strip()!r}") from None
        points.append((x, y))
    if len(points) < 5:
        raise DataError(f"{path}: {len(points)} landmark lines, five needed (eyes, nose, mouth corners)")
    return torch.tensor(points, dtype=torch.float32)


def load_rafdb(path: str | Path, split: str, images: str = "aligned", landmarks: str = "manual",
                     skip_bad: bool = False) -> ImageSplit:
    """The `train` or `test` split of RAF-DB, from the aligned images or from the original photos.

    With images="original" every sample carries its five landmarks (read from `landmarks`: "manual" or
    "auto"), and the loaders align it. Every sample records its label file line in `listed_at`.
    A listed image that does not exist, or a landmark file that is missing or malformed, raises DataError
    naming the label file and line; with skip_bad=True such samples are left out with a warning and a count.
    """
    if split not in ("train", "test"):
        raise ValueError(f"RAF-DB split must be train or test, got {split!r}")
    if images not in ("aligned", "original"):
        raise ValueError(f"RAF-DB images must be aligned or original, got {images!r}")
    root = rafdb_root(path)
    label_file = root / LABEL_FILE
    entries = [e for e in parse_label_file(label_file, len(CLASS_NAMES)) if e.name.startswith(f"{split}_")]
    if not entries:
        raise DataError(f"{label_file}: no {split}_* lines")
    kept, paths, points, problems = [], [], [], []
    for entry in entries:
        image = aligned_image_path(root, entry.name) if images == "aligned" else root / ORIGINAL_DIR / entry.name
        try:
            if not image.is_file():
                raise DataError(f"image {image} not found")
            if images == "original":
                points.append(read_landmarks(landmark_path(root, entry.name, landmarks)))
        except DataError as err:
            problems.append(f"{label_file} line {entry.lineno}: {err}")
            continue
        kept.append(entry)
        paths.append(image)
    if problems:
        count = f"{len(problems)} of {len(entries)} {split} images"
        if not skip_bad:
            raise DataError(problems[0] + (f" ({count} cannot be used)" if len(problems) > 1 else ""))
        log.warning("RAF-DB %s: skipped %s that cannot be used; first: %s", split, count, problems[0])
        if not kept:
            raise DataError(f"{label_file}: none of the {len(entries)} {split} images can be used")
    return ImageSplit(
        names=[e.name for e in kept],
        labels=torch.tensor([e.label for e in kept], dtype=torch.long),
        class_names=CLASS_NAMES,
        paths=paths,
        listed_at=[f"{label_file} line {e.lineno}" for e in kept],
        landmarks=torch.stack(points) if images == "original" else None,
    )
