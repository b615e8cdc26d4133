"""One split of a labelled image dataset, whatever its source."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from smec_fast.seeding import stream


@dataclass
class ImageSplit:
    """Images of one split with their labels.

    Either `paths` (image files, decoded by the loader) or `images` (in memory) is set.
    `names` identify samples in label and noise files (`train_00001.jpg`); `labels` are the labels trained
    on (noisy, when noise was applied) and `clean_labels` the labels before any noise.
    `listed_at` says where each sample was listed (`.../list_patition_label.txt line 7`), for error messages;
    `landmarks` holds the five facial landmarks of image-file splits that are aligned when loaded
    (RAF-DB's original images, see align.py).
    """

    names: list[str]
    labels: torch.Tensor  # (N,) int64, 0-based class indices
    class_names: tuple[str, ...]
    paths: list[Path] | None = None
    images: torch.Tensor | None = None  # (N, 3, H, W) uint8
    clean_labels: torch.Tensor | None = None  # (N,) int64; None: same as labels
    listed_at: list[str] | None = None  # (N,) label file and line of each sample; None: not from a label file
    landmarks: torch.Tensor | None = None  # (N, 5, 2) float32 (x, y) pixel positions; None: no alignment

    def __post_init__(self) -> None:
        if (self.paths is None) == (self.images is None):
            raise ValueError("ImageSplit needs exactly one of paths or images")
        n = len(self.names)
        stored = self.paths if self.paths is not None else self.images
        if self.labels.shape != (n,) or stored is None or len(stored) != n:
            raise ValueError("ImageSplit: names, labels and images differ in length")
        if self.listed_at is not None and len(self.listed_at) != n:
            raise ValueError("ImageSplit: listed_at and names differ in length")
        if self.landmarks is not None and (self.paths is None or self.landmarks.shape != (n, 5, 2)):
            raise ValueError("ImageSplit: landmarks must be (N, 5, 2) and belong to a split of image files")
        if self.clean_labels is None:
            self.clean_labels = self.labels.clone()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def files(self) -> list[Path]:
        """The image files of a split read from files (ValueError for one held in memory)."""
        if self.paths is None:
            raise ValueError("this split is held in memory, not in image files")
        return self.paths

    @property
    def clean(self) -> torch.Tensor:
        """(N,) int64 the labels before any noise (`clean_labels`, which __post_init__ fills in)."""
        return self.labels if self.clean_labels is None else self.clean_labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor) -> "ImageSplit":
        """The samples at `index` (a 1-D int64 tensor), in that order."""
        idx = index.tolist()
        return replace(
            self,
            names=[self.names[i] for i in idx],
            labels=self.labels[index],
            clean_labels=self.clean[index],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            images=None if self.images is None else self.images[index],
            listed_at=None if self.listed_at is None else [self.listed_at[i] for i in idx],
            landmarks=None if self.landmarks is None else self.landmarks[index],
        )

    def with_labels(self, labels: torch.Tensor) -> "ImageSplit":
        """The same samples trained on other labels; the clean labels stay."""
        if labels.shape != self.labels.shape:
            raise ValueError("with_labels: shape differs")
        return replace(self, labels=labels)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


def random_subset_index(n: int, k: int, seed: int) -> torch.Tensor:
    """A seeded choice of min(k, n) of n indices, in ascending order."""
    if k >= n:
        return torch.arange(n)
    generator = stream("subset", seed)
    return torch.randperm(n, generator=generator)[:k].sort().values
