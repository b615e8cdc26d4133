"""Class-folder datasets (FER2013 and the like): `root/train/<class>/*.jpg`, `root/test/<class>/*.jpg`.

The test split may also be called `val`, `valid` or `validation`. Class indices follow the sorted folder
names of the training split, as torchvision's ImageFolder does; greyscale images become 3-channel when
decoded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets.folder import find_classes, make_dataset

from smec_fast.errors import DataError

from .image_split import ImageSplit
from .images import IMAGE_SUFFIXES

TEST_DIR_NAMES = ("test", "val", "valid", "validation")


def split_dir(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    names = ("train",) if split == "train" else TEST_DIR_NAMES
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root} has no {' or '.join(n + '/' for n in names)} folder of class folders")


def load_folder(path: str | Path, split: str) -> ImageSplit:
    """The `train` or `test` split of a class-folder dataset, classes named by the training folders."""
    if split not in ("train", "test"):
        raise ValueError(f"folder split must be train or test, got {split!r}")
    root = Path(path)
    train_dir = split_dir(root, "train")
    try:
        class_names, class_to_idx = find_classes(str(train_dir))
    except FileNotFoundError:
        raise DataError(f"{train_dir} holds no class folders") from None
    directory = split_dir(root, split)
    present = sorted(p.name for p in directory.iterdir() if p.is_dir())
    unknown = [name for name in present if name not in class_to_idx]
    if unknown:
        raise DataError(f"{directory / unknown[0]}: class folder not found in {train_dir}")
    try:
        samples = make_dataset(str(directory), class_to_idx, extensions=IMAGE_SUFFIXES,
                               allow_empty=split != "train")
    except FileNotFoundError as err:
        raise DataError(f"{directory}: {err}") from None
    if not samples:
        raise DataError(f"{directory}: no images found")
    paths = [Path(p) for p, _ in samples]
    return ImageSplit(
        names=[p.relative_to(directory).as_posix() for p in paths],
        labels=torch.tensor([label for _, label in samples], dtype=torch.long),
        class_names=tuple(class_names),
        paths=paths,
    )
