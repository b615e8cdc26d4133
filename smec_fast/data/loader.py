"""Batches of a split: decode, resize, random horizontal flip, normalise.

The order and the flips of every epoch come from a generator seeded by (seed, epoch), not from a global
RNG, so an epoch sees the same batches whatever the number of workers and however often the run was
interrupted and resumed. Flips are batch tensor ops on the training device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from smec_fast.errors import DataError

from .split import ImageSplit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_image_file(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) uint8 RGB image: decoded with PIL (greyscale, palette and RGBA made RGB) and resized
    with PIL's antialiased bilinear filter."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot decode image ({reason})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, S, S)


class ImageFileDataset(Dataset):
    """(image uint8 (3, S, S), label, index) of an image-file split; index is the position in the split."""

    def __init__(self, split: ImageSplit, image_size: int):
        if split.paths is None:
            raise ValueError("ImageFileDataset needs a split of image files")
        self.split = split
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return decode_image_file(self.split.paths[i], self.image_size), self.split.labels[i], i


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised with ImageNet statistics."""
    mean = images.new_tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def random_hflip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip the images whose entry of `flip` (B,) bool is set."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_033 + epoch)


class SplitLoader:
    """Iterates a split as (images float (B, 3, S, S) normalised, labels (B,), index (B,)) on `device`.

    Training loaders (`train=True`) shuffle, flip half the images at random and drop the last incomplete
    batch (a batch of one would break BatchNorm); evaluation loaders keep the split's order.
    In-memory splits are moved to the device once, as uint8; image-file splits are decoded by DataLoader
    workers.
    """

    def __init__(self, split: ImageSplit, image_size: int, batch_size: int, device: torch.device,
                 train: bool, seed: int = 0, num_workers: int = 0):
        self.split = split
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.seed = seed
        self.num_workers = num_workers
        self.epoch = 0
        self.labels = split.labels.to(device)
        if split.images is not None:
            images = split.images
            if images.shape[-2:] != (image_size, image_size):
                images = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear",
                                       antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
            self.images = images.to(device)
            self.dataset = None
        else:
            self.images = None
            self.dataset = ImageFileDataset(split, image_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        n = len(self.split)
        if not self.train:
            order, flips = torch.arange(n), None
        else:
            generator = epoch_generator(self.seed, self.epoch)
            order = torch.randperm(n, generator=generator)
            flips = torch.rand(n, generator=generator) < 0.5
        size = min(self.batch_size, n)
        stop = n - n % size if self.train else n
        return [order[i:i + size] for i in range(0, stop, size)], flips

    def __len__(self) -> int:
        return len(self._batches()[0])

    def __iter__(self):
        batches, flips = self._batches()
        if self.images is not None:
            for pos, index in enumerate(batches):
                index = index.to(self.device, non_blocking=True)
                yield self._finish(self.images[index], index, flips, pos, len(index))
            return
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for pos, (images, _, index) in enumerate(loader):
            index = index.to(self.device, non_blocking=True)
            yield self._finish(images.to(self.device, non_blocking=True), index, flips, pos, len(index))

    def _finish(self, images, index, flips, pos, size):
        if flips is not None:
            start = pos * self.batch_size
            images = random_hflip(images, flips[start:start + size].to(self.device, non_blocking=True))
        return normalize(images), self.labels[index], index
