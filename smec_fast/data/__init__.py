"""Datasets of the trainer: the embedded synthetic faces, RAF-DB and class-folder datasets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from smec_fast.config import TrainConfig
from smec_fast.errors import ConfigError
from smec_fast.seeding import stream

from .cache import CachedLoader
from .dali import DaliLoader, dali_available
from .folder import load_folder
from .images import decode_image_file, normalize
from .torch_loader import SplitLoader, epoch_batches, random_hflip
from .loaders import LOADER_KINDS, default_loader, make_loader
from .noise import NoiseReport, labels_from_file, read_label_file, symmetric_noise, write_label_file
from .rafdb import load_rafdb
from .image_split import ImageSplit, random_subset_index
from .synthetic import synthetic_split
from .validate import find_bad_samples, validate_split

log = logging.getLogger(__name__)

# Subsets (--max-train-samples, --max-test-samples, --val-fraction) use this fixed seed, so that runs with
# different training seeds and methods see the same images.
SUBSET_SEED = 0
# The embedded dataset is the same for every run, like a dataset on disk.
SYNTHETIC_SEED = 0


@dataclass
class FerData:
    """The splits a run uses, with the noise applied to the training labels."""

    train: ImageSplit
    test: ImageSplit
    val: ImageSplit | None
    noise: NoiseReport

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


def load_split(cfg: TrainConfig, split: str) -> ImageSplit:
    """The full `train` or `test` split of the configured dataset."""
    if cfg.dataset == "synthetic":
        total = cfg.synthetic_train_size if split == "train" else cfg.synthetic_test_size
        return synthetic_split(split, total, cfg.image_size, SYNTHETIC_SEED)
    if cfg.dataset != "synthetic" and not cfg.data:
        raise ConfigError(f"--data is required with --dataset {cfg.dataset}")
    assert cfg.data is not None
    if cfg.dataset == "rafdb":
        return load_rafdb(cfg.data, split, images=cfg.rafdb_images, landmarks=cfg.rafdb_landmarks,
                          skip_bad=cfg.skip_bad_images)
    if cfg.dataset == "folder":
        return load_folder(cfg.data, split)
    raise ConfigError(f"unknown dataset {cfg.dataset!r}")


def validation_split_index(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions (ascending) of the max(1, round(fraction * n)) images held out for validation, and of
    the rest; the same for every seed and method, like a dataset's own split."""
    order = torch.randperm(n, generator=stream("validation-split", SUBSET_SEED))
    n_val = max(1, round(fraction * n))
    return order[:n_val].sort().values, order[n_val:].sort().values


def build_data(cfg: TrainConfig) -> FerData:
    """Load the splits, cap their size, check their images, apply label noise, hold out a validation part."""
    train = load_split(cfg, "train")
    test = load_split(cfg, "test")
    if train.class_names != test.class_names:
        raise ConfigError(f"train and test splits have different classes: {train.class_names} vs {test.class_names}")
    if cfg.max_train_samples:
        train = train.subset(random_subset_index(len(train), cfg.max_train_samples, SUBSET_SEED))
    if cfg.max_test_samples:
        test = test.subset(random_subset_index(len(test), cfg.max_test_samples, SUBSET_SEED + 1))
    # Every image present and sound before the first epoch, not a decode error in the middle of one.
    train = validate_split(train, skip=cfg.skip_bad_images, what="train")
    test = validate_split(test, skip=cfg.skip_bad_images, what="test")

    k = train.num_classes
    if cfg.noise_file:
        labels, noise = labels_from_file(train.names, train.clean, cfg.noise_file, k)
    elif cfg.noise_rate > 0:
        labels = symmetric_noise(train.clean, cfg.noise_rate, k, cfg.effective_noise_seed)
        noise = NoiseReport(source="symmetric", changed=int((labels != train.clean).sum()), total=len(train))
    else:
        labels = train.clean
        noise = NoiseReport(source="none", changed=0, total=len(train))
    train = train.with_labels(labels)

    val = None
    if cfg.val_fraction > 0:
        held_out, kept = validation_split_index(len(train), cfg.val_fraction)
        val, train = train.subset(held_out), train.subset(kept)
    if len(train) < 2:
        raise ConfigError(f"the training split has {len(train)} image(s); at least 2 are needed")
    return FerData(train=train, test=test, val=val, noise=noise)


__all__ = [
    "LOADER_KINDS",
    "CachedLoader",
    "DaliLoader",
    "FerData",
    "ImageSplit",
    "NoiseReport",
    "SplitLoader",
    "build_data",
    "dali_available",
    "decode_image_file",
    "default_loader",
    "epoch_batches",
    "find_bad_samples",
    "labels_from_file",
    "load_folder",
    "load_rafdb",
    "load_split",
    "make_loader",
    "normalize",
    "random_hflip",
    "read_label_file",
    "symmetric_noise",
    "synthetic_split",
    "validate_split",
    "validation_split_index",
    "write_label_file",
]
