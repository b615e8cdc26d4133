"""Batches of a split: decode, resize, random horizontal flip, normalise.

The order and the flips of every epoch come from a generator seeded by (seed, epoch), not from a global
RNG, so an epoch sees the same batches whatever the number of workers and however often the run was
interrupted and resumed. Flips are batch tensor ops on the training device.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from smec_fast.errors import DataError
from smec_fast.seeding import stream

from .align import decode_aligned_image_file, warp_matrices
from .images import decode_image_file, normalize
from .image_split import ImageSplit

class ImageFileDataset(Dataset):
    """(image uint8 (3, S, S), label, index) of an image-file split; index is the position in the split.

    Splits with landmarks (RAF-DB's original photos) are aligned to the 100 x 100 face frame first.
    """

    def __init__(self, split: ImageSplit, image_size: int):
        if split.paths is None:
            raise ValueError("ImageFileDataset needs a split of image files")
        self.split = split
        self.image_size = image_size
        self.matrices = None  # (N, 2, 3) warp matrices of aligned splits
        if split.landmarks is not None:
            self.matrices = warp_matrices(split.landmarks)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        if self.matrices is not None:
            image = decode_aligned_image_file(self.split.files[i], self.matrices[i], self.image_size)
        else:
            image = decode_image_file(self.split.files[i], self.image_size)
        return image, self.split.labels[i], i

    def __getitems__(self, indices: list[int]):
        # DataLoader workers fetch whole batches through this. A decode error travels back as a
        # DecodeFailure value, so the main process raises one DataError line instead of the worker's traceback.
        try:
            return [self[i] for i in indices]
        except DataError as err:
            return [DecodeFailure(str(err))]


class DecodeFailure:
    """The message of a DataError raised while a DataLoader worker decoded a batch."""

    def __init__(self, message: str):
        self.message = message


def collate_or_failure(samples: list):
    """default_collate, or the DecodeFailure when the batch could not be decoded."""
    if samples and isinstance(samples[0], DecodeFailure):
        return samples[0]
    return default_collate(samples)


def random_hflip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip the images whose entry of `flip` (B,) bool is set."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return stream("epoch-order", seed, epoch)


def epoch_batches(n: int, batch_size: int, train: bool, seed: int = 0, epoch: int = 0, shard_id: int = 0,
                  num_shards: int = 1) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The batches of one epoch on one shard: (index (b,) int64 positions in the split, flip (b,) bool or None).

    Training epochs follow a permutation and coin flips drawn from a generator seeded by (seed, epoch), so
    every loader kind sees the same batches and flips for the same (seed, epoch). Shard k of m takes the
    positions k, k + m, k + 2m, ... of the epoch's order, so the shards are disjoint and together cover the
    epoch. Training keeps n - n % m samples, the same number on every shard, and drops each shard's last
    incomplete batch, so all ranks take the same number of steps; evaluation keeps every sample and the
    last partial batch (shard sizes then differ by at most one sample). With m = 1 this is the plain epoch.
    """
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard {shard_id} of {num_shards} does not exist")
    if train:
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(n, generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        usable = n - n % num_shards
    else:
        order, flips, usable = torch.arange(n), None, n
    positions = torch.arange(shard_id, usable, num_shards)
    m = len(positions)
    if m == 0:
        return []
    size = min(batch_size, m)
    stop = m - m % size if train else m
    return [(order[positions[i:i + size]], None if flips is None else flips[positions[i:i + size]])
            for i in range(0, stop, size)]


def batches_per_epoch(n: int, batch_size: int, train: bool, shard_id: int = 0, num_shards: int = 1) -> int:
    """len(epoch_batches(...)) without drawing the epoch's permutation."""
    usable = n - n % num_shards if train else n
    m = len(range(shard_id, usable, num_shards))
    if m == 0:
        return 0
    size = min(batch_size, m)
    return m // size if train else -(-m // size)


class EpochLoader:
    """What every loader kind shares: the split, the training size and batch, the device, and this process's
    shard of each epoch's plan (epoch_batches). Subclasses turn the plan into batches of
    (images float32 (B, 3, S, S) normalised, labels (B,) int64, index (B,) int64) on `device`."""

    def __init__(self, split: ImageSplit, image_size: int, batch_size: int, device: torch.device | str,
                 train: bool, seed: int = 0, num_workers: int = 0, shard_id: int = 0, num_shards: int = 1):
        if num_shards < 1 or not 0 <= shard_id < num_shards:
            raise ValueError(f"shard {shard_id} of {num_shards} does not exist")
        self.split = split
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.train = train
        self.seed = seed
        self.num_workers = num_workers
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.epoch = 0
        self.labels = split.labels.to(self.device)
        # Training batches mirror half their images at random; a method whose recipe augments otherwise turns
        # this off (the epoch's order stays the same: the coin flips are drawn and left unused).
        self.hflip = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @contextlib.contextmanager
    def in_order(self):
        """Inside the block the loader yields the split once in its own order, without flips and with the last
        partial batch, as an evaluation loader does (for scoring the training split); then training batches
        again."""
        train, self.train = self.train, False
        try:
            yield self
        finally:
            self.train = train

    def _batches(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        batches = epoch_batches(len(self.split), self.batch_size, self.train, self.seed, self.epoch,
                                self.shard_id, self.num_shards)
        return batches if self.hflip else [(index, None) for index, _ in batches]

    def __len__(self) -> int:
        return batches_per_epoch(len(self.split), self.batch_size, self.train, self.shard_id, self.num_shards)


class SplitLoader(EpochLoader):
    """Iterates a split as (images float (B, 3, S, S) normalised, labels (B,), index (B,)) on `device`.

    Training loaders (`train=True`) shuffle, flip half the images at random and drop the last incomplete
    batch (a batch of one would break BatchNorm); evaluation loaders keep the split's order.
    In-memory splits are moved to the device once, as uint8; image-file splits are decoded by DataLoader
    workers. With num_shards > 1 the loader yields shard `shard_id`'s part of every epoch (see
    epoch_batches), for one process of a multi-process run.
    """

    def __init__(self, split: ImageSplit, image_size: int, batch_size: int, device: torch.device,
                 train: bool, seed: int = 0, num_workers: int = 0, shard_id: int = 0, num_shards: int = 1):
        super().__init__(split, image_size, batch_size, device, train, seed, num_workers, shard_id, num_shards)
        self.images: torch.Tensor | None = None  # (N, 3, S, S) uint8 on the device, for a split held in memory
        self.dataset: ImageFileDataset | None = None  # for a split of image files
        if split.images is not None:
            images = split.images
            if images.shape[-2:] != (image_size, image_size):
                images = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear",
                                       antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
            self.images = images.to(self.device)
        else:
            self.dataset = ImageFileDataset(split, image_size)

    def __iter__(self):
        batches = self._batches()
        if self.images is not None:
            for index, flip in batches:
                index = index.to(self.device, non_blocking=True)
                yield self._finish(self.images[index], index, flip)
            return
        loader = DataLoader(self.dataset, batch_sampler=[index.tolist() for index, _ in batches],
                            num_workers=self.num_workers, collate_fn=collate_or_failure,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for (_, flip), batch in zip(batches, loader):
            if isinstance(batch, DecodeFailure):
                raise DataError(batch.message)
            images, _, index = batch
            index = index.to(self.device, non_blocking=True)
            yield self._finish(images.to(self.device, non_blocking=True), index, flip)

    def _finish(self, images, index, flip):
        if flip is not None:
            images = random_hflip(images, flip.to(self.device, non_blocking=True))
        return normalize(images), self.labels[index], index
