"""Device-resident image cache: decode a split once to uint8 on the training device, then make every batch
there with tensor ops (gather, flip, normalise, resize).

The cache holds the images at their stored size (48 x 48 for FER2013, 100 x 100 for RAF-DB's aligned faces
and for aligned original photos), so RAF-DB's 15,339 faces take 15,339 x 3 x 100 x 100 B = 0.46 GB and
FER2013's 28,709 training faces 0.20 GB, whatever the training size. A split whose images differ in size
is cached at the training size instead (resized once with PIL, as the reference loader does).

Per batch, the flip and the normalisation run at the stored size, before the resize: a horizontal flip
commutes with a mirror-symmetric resampling, and a per-channel affine map commutes with a resampling
whose weights sum to one, so this equals resizing first up to float rounding, and the full-size tensor is
written once. Decoding is the decode path the reference loader (torch_loader.SplitLoader) uses, so the cached
pixels equal the reference's before the resize; the resize is torch's bilinear with PIL's antialiasing filter
when shrinking, and is not rounded to uint8 as the reference's is (PIL rounds after each of its two 1-D
passes, so the two differ by at most 1 grey level).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from .images import IMAGENET_MEAN, IMAGENET_STD, decode_rgb, pil_to_tensor, resize_like_reference
from .torch_loader import EpochLoader
from .image_split import ImageSplit

log = logging.getLogger(__name__)


class HostBatchBuffers:
    """Reusable CPU tensors for the batches a loader yields.

    Allocating a fresh 77 MB tensor per (128, 3, 224, 224) float32 batch makes the kernel fault in and zero
    every page; measured on this project's 2-core CPU machine that was a third of the DALI CPU loader's time
    (1,170 images/s with fresh tensors, 1,750 with reused ones, at 224).
    A buffer is handed out again only when nothing else refers to its storage any more (no tensor or view
    of the batch it held is alive), which the storage's reference count tells; otherwise a new tensor is
    allocated, so reuse never overwrites a batch still in use.
    """

    def __init__(self, slots: int = 4):
        self.slots = slots
        self._storages: list[torch.UntypedStorage] = []
        self._can_reuse = hasattr(torch._C, "_storage_Use_Count")

    def _unused(self, storage: torch.UntypedStorage) -> bool:
        return torch._C._storage_Use_Count(storage._cdata) == 1  # only this pool refers to it

    def take(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An uninitialised contiguous CPU tensor of `shape`."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if self._can_reuse:
            for storage in self._storages:
                if storage.nbytes() >= nbytes and self._unused(storage):
                    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)  # type: ignore[call-overload]
        tensor = torch.empty(shape, dtype=dtype)
        if self._can_reuse:
            free = [i for i, s in enumerate(self._storages) if self._unused(s)]  # free but too small
            if free:
                self._storages.pop(free[0])
            if len(self._storages) < self.slots:
                self._storages.append(tensor.untyped_storage())
        return tensor


class NativeImageDataset:
    """(3, h, w) uint8 images of a split at their stored size; photos with landmarks aligned to 100 x 100."""

    def __init__(self, split: ImageSplit):
        self.split = split
        self.matrices = None
        if split.landmarks is not None:
            from .align import warp_matrices

            self.matrices = warp_matrices(split.landmarks)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.split.files[i]
        if self.matrices is not None:
            from .align import decode_aligned_image_file

            return decode_aligned_image_file(path, self.matrices[i], None)
        return pil_to_tensor(decode_rgb(path))  # (3, h, w)

    def decode_range(self, start: int, stop: int) -> list[torch.Tensor]:
        return [self[i] for i in range(start, stop)]


def cache_bytes(split: ImageSplit, image_size: int) -> int:
    """Bytes the cache of `split` takes, estimated from its first image's header."""
    if split.images is not None:
        return split.images.numel()
    if split.landmarks is not None:
        from .align import ALIGNED_SIZE

        return len(split) * 3 * ALIGNED_SIZE * ALIGNED_SIZE
    try:
        with Image.open(split.files[0]) as image:
            w, h = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        w = h = image_size
    return len(split) * 3 * h * w


def decode_split(split: ImageSplit, image_size: int, num_workers: int = 0, chunk: int = 256) -> torch.Tensor:
    """(N, 3, h, w) uint8 on the CPU: every image of the split decoded once.

    `num_workers` threads decode chunks of images (PIL releases the GIL while decoding). Threads rather
    than DataLoader processes: forking a process that runs DALI pipelines crashed the forked workers, and
    sending thousands of small tensors back from processes cost more than the decoding (FER2013: 4.3 s with
    2 processes, 1.5 s in one thread, for 9,570 images). Images keep their stored size when all share it;
    otherwise all are resized to image_size.
    """
    if split.images is not None:
        return split.images
    dataset = NativeImageDataset(split)
    ranges = [(start, min(start + chunk, len(split))) for start in range(0, len(split), chunk)]
    if num_workers > 1:
        with ThreadPoolExecutor(num_workers) as pool:
            parts = list(pool.map(lambda r: dataset.decode_range(*r), ranges))
    else:
        parts = [dataset.decode_range(*r) for r in ranges]
    images = [image for part in parts for image in part]
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        log.info("images of %d sizes: caching them at %d x %d", len(sizes), image_size, image_size)
        images = [image if image.shape[-2:] == (image_size, image_size)
                  else pil_to_tensor(resize_like_reference(Image.fromarray(image.permute(1, 2, 0).numpy()), image_size))
                  for image in images]
    return torch.stack(images)  # (N, 3, h, w)


class CachedLoader(EpochLoader):
    """Same interface and batches as torch_loader.SplitLoader, from a uint8 cache of the split on `device`.

    The split is decoded once, at construction (by `num_workers` threads). Batches follow
    torch_loader.epoch_batches: the same order and flips as the other loaders for the same (seed, epoch).
    """

    def __init__(self, split: ImageSplit, image_size: int, batch_size: int, device: torch.device, train: bool,
                 seed: int = 0, num_workers: int = 0, shard_id: int = 0, num_shards: int = 1):
        super().__init__(split, image_size, batch_size, device, train, seed, num_workers, shard_id, num_shards)
        images = decode_split(split, image_size, num_workers)  # (N, 3, h, w) uint8
        if self.device.type == "cuda":
            images = images.pin_memory()
        self.images = images.to(self.device, non_blocking=True)
        h, w = self.images.shape[-2:]
        self.resize = (h, w) != (image_size, image_size)
        # Antialiasing only matters when shrinking; plain bilinear is the same filter when enlarging, and faster.
        self.antialias = h > image_size or w > image_size
        std255 = torch.tensor(IMAGENET_STD, dtype=torch.float32) * 255.0
        self.mean255 = (torch.tensor(IMAGENET_MEAN, dtype=torch.float32) * 255.0).view(1, 3, 1, 1).to(self.device)
        self.inv_std255 = (1.0 / std255).view(1, 3, 1, 1).to(self.device)
        self.buffers = HostBatchBuffers() if self.device.type == "cpu" else None

    def __iter__(self):
        for index, flip in self._batches():
            index = index.to(self.device, non_blocking=True)
            if flip is not None:
                flip = flip.to(self.device, non_blocking=True)
            yield self.make_batch(index, flip), self.labels[index], index

    def make_batch(self, index: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, S, S) float32 normalised images at `index` (B,), those with `flip` (B,) set mirrored."""
        x = self.images[index].float()  # (B, 3, h, w)
        if flip is not None:
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = (x - self.mean255) * self.inv_std255
        s = self.image_size
        shape = (x.shape[0], 3, s, s)
        out = self.buffers.take(shape) if self.buffers is not None else torch.empty(shape, device=self.device)
        if not self.resize:
            return out.copy_(x)
        if self.antialias:
            return torch.ops.aten._upsample_bilinear2d_aa.out(x, [s, s], False, None, None, out=out)
        return torch.ops.aten.upsample_bilinear2d.out(x, [s, s], False, None, None, out=out)
