"""NVIDIA DALI loader: read, decode, align, normalise, flip and resize image files in a DALI pipeline.

One pipeline serves both devices: on a GPU the JPEGs are decoded by nvJPEG ("mixed") and every later step
runs on the GPU; on the CPU the same operators run in DALI's CPU threads (`device_id=None`). It reads only files
its decoder reads exactly as the one decode path (images.decode_rgb) does, orientation and bit depth included
(dali_problem: a split holding others is refused, and `--loader auto` does not choose DALI for it). Per sample:

    file bytes -> decode (RGB) -> [warp to the 100 x 100 aligned frame] -> mirror + normalise (CHW float)
               -> resize to S x S (bilinear; antialiased when shrinking)

Normalising and mirroring before the resize gives the same result as after it (both commute with a
resampling whose weights sum to one and that is mirror-symmetric), runs on the small image, and leaves the
resized pixels in float rather than rounded to uint8; on the 2-core CPU machine the two orders measured
within noise of each other (FER2013 at 112 and 224), so the more exact one is used. The resize is the
reference's filter (PIL's antialiased bilinear); only when shrinking does DALI treat the border
differently (it repeats the edge pixel where PIL renormalises), which tests/test_loaders.py bounds.

Batches are copied out of DALI into tensors the caller owns: on the CPU into reused buffers
(cache.HostBatchBuffers), on a GPU on PyTorch's current stream.

The epoch's order and flips are not DALI's: an external source feeds the batches of torch_loader.epoch_batches,
the plan every loader kind shares, so a (seed, epoch) gives the same batches with every loader, sharding
by rank is a matter of which positions a shard takes, and a resumed run replays its epoch exactly.

DALI is imported when a DaliLoader is made, so the rest of the package works without it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy as np
import torch

from smec_fast.errors import ConfigError, DataError

from .cache import HostBatchBuffers
from .images import IMAGENET_MEAN, IMAGENET_STD, decode_image_file
from .torch_loader import EpochLoader
from .image_split import ImageSplit

INSTALL_HINT = "pip install nvidia-dali-cuda130"


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported here."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


# Files DALI's decoder reads exactly as images.decode_rgb does (tests/test_loaders.py checks each kind on the same
# files): JPEG of any mode and EXIF orientation, and PNG, BMP, WebP and TIFF without transparency in these modes,
# 16-bit greyscale and RGB included (DALI scales them by their range too).
DALI_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
DALI_MODES = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L")


def dali_problem(path) -> str | None:
    """Why DALI's decoder would read this file otherwise than decode_rgb (transparency, several frames, an
    unusual format or bit depth), or None; a file PIL cannot open is for the decode path to report. The answer
    is kept for the file as it is (path, size, modification time): `--loader auto` and every DaliLoader of a run
    ask about the same files."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _dali_problem(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 20)
def _dali_problem(path: str, size: int, mtime_ns: int) -> str | None:
    from .images import open_image

    try:
        with open_image(path) as image:
            if image.format not in DALI_FORMATS:
                return f"a {image.format} image"
            if image.mode not in DALI_MODES:
                return f"mode {image.mode}"
            if "transparency" in image.info:
                return "transparent pixels"
            frames = int(getattr(image, "n_frames", 1))
            if frames > 1:
                return f"{frames} frames"
    except DataError:
        return None
    return None


def check_dali_files(split: ImageSplit) -> None:
    """ConfigError naming the first file of `split` that DALI would decode otherwise than the other loaders."""
    for path in split.files:
        problem = dali_problem(path)
        if problem is not None:
            raise ConfigError(f"--loader dali: {path} holds {problem}, which DALI's decoder reads otherwise than the "
                              f"torch and cached loaders; use --loader torch or cached (auto chooses them here)")


def import_dali():
    """(Pipeline, fn, types, feed_ndarray) from NVIDIA DALI, or ConfigError saying how to get it."""
    try:
        from nvidia.dali import Pipeline, fn, types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as err:
        raise ConfigError(f"--loader dali needs NVIDIA DALI, which cannot be imported here ({err}); "
                          f"install it ({INSTALL_HINT}) or use --loader torch or --loader cached") from None
    return Pipeline, fn, types, feed_ndarray


class BatchFeed:
    """The external source of a DaliLoader's pipeline: each call returns the next batch's encoded files,
    mirror flags and (for aligned splits) warp matrices; StopIteration ends the epoch.

    It holds no reference to the loader, so a dropped loader frees its pipeline (and DALI's threads) at once.
    """

    def __init__(self, paths: list, matrices: np.ndarray | None):
        self.paths = paths
        self.matrices = matrices  # (N, 2, 3) float32, or None
        self.batches = iter(())
        self.error: str | None = None  # why the epoch ended early

    def start(self, batches) -> None:
        self.batches, self.error = iter(batches), None

    def __call__(self):
        index, flip = next(self.batches)
        files = []
        for i in index.tolist():
            try:
                files.append(np.fromfile(self.paths[i], dtype=np.uint8))
            except OSError as err:
                self.error = f"{self.paths[i]}: cannot read image ({err.strerror or err})"
                raise StopIteration from None
        mirror = [np.array(f, dtype=np.int32) for f in (flip.tolist() if flip is not None else [0] * len(files))]
        if self.matrices is None:
            return files, mirror
        return files, mirror, [self.matrices[i] for i in index.tolist()]


class DaliLoader(EpochLoader):
    """Same interface and batches as torch_loader.SplitLoader, decoded and transformed by a DALI pipeline.

    `num_workers` is the number of DALI CPU threads. The pipeline is built on the first iteration and
    reused for every epoch; an epoch left unfinished (a `break`) makes the next one build it anew, since
    the old one still holds prefetched batches.
    """

    def __init__(self, split: ImageSplit, image_size: int, batch_size: int, device: torch.device, train: bool,
                 seed: int = 0, num_workers: int = 2, shard_id: int = 0, num_shards: int = 1,
                 prefetch: int = 2):
        if split.paths is None:
            raise ValueError("DaliLoader reads image files; this split is held in memory")
        super().__init__(split, image_size, batch_size, device, train, seed, num_workers, shard_id, num_shards)
        self._dali = import_dali()
        check_dali_files(split)
        self.prefetch = prefetch
        matrices = None  # (N, 2, 3) float32 warp matrices of aligned splits
        if split.landmarks is not None:
            from .align import warp_matrices

            matrices = warp_matrices(split.landmarks).numpy()
        self.aligned = matrices is not None
        self.feed = BatchFeed(split.files, matrices)
        self.buffers = HostBatchBuffers() if self.device.type == "cpu" else None
        self._pipe: Any = None  # the DALI pipeline, built on the first iteration
        self._pipe_ready = False  # built and not in the middle of an epoch

    def _build(self):
        Pipeline, fn, types, _ = self._dali
        gpu = self.device.type == "cuda"
        device_id = None  # DALI's CPU-only mode
        if gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        pipe = Pipeline(batch_size=self.batch_size, num_threads=max(1, self.num_workers), device_id=device_id,
                        prefetch_queue_depth=self.prefetch)
        aligned = self.aligned
        with pipe:
            dtypes = [types.UINT8, types.INT32] + ([types.FLOAT] if aligned else [])
            inputs = fn.external_source(source=self.feed, num_outputs=len(dtypes), batch=True, dtype=dtypes)
            # EXIF orientation as images.decode_rgb: applied, but for photos with landmarks (which refer to the
            # stored pixel grid)
            images = fn.decoders.image(inputs[0], device="mixed" if gpu else "cpu", output_type=types.RGB,
                                       adjust_orientation=not aligned)
            if aligned:
                from .align import ALIGNED_SIZE

                images = fn.warp_affine(images, matrix=inputs[2], size=[ALIGNED_SIZE, ALIGNED_SIZE], fill_value=0,
                                        interp_type=types.INTERP_LINEAR, inverse_map=True)
            images = fn.crop_mirror_normalize(images, mirror=inputs[1], dtype=types.FLOAT, output_layout="CHW",
                                              mean=[m * 255.0 for m in IMAGENET_MEAN],
                                              std=[s * 255.0 for s in IMAGENET_STD])
            images = fn.resize(images, resize_x=self.image_size, resize_y=self.image_size,
                               interp_type=types.INTERP_LINEAR, antialias=True)
            pipe.set_outputs(images)
        pipe.build()
        return pipe

    def __iter__(self):
        batches = self._batches()
        if not batches:
            return
        if not self._pipe_ready:
            self._pipe = None  # drop the old pipeline (and any batches it prefetched) first
            self.feed.start(())
            self._pipe = self._build()
        self._pipe_ready = False
        self.feed.start(batches)
        for k, (index, _) in enumerate(batches):
            images = self._run(batches, k)
            index = index.to(self.device, non_blocking=True)
            yield images, self.labels[index], index
        try:
            self._pipe.run()  # the feed is exhausted: DALI answers with the end of the epoch
        except StopIteration:
            self._pipe.reset()
            self._pipe_ready = True

    def _run(self, batches, k: int) -> torch.Tensor:
        """(B, 3, S, S) float32 images of batch k on the device."""
        assert self._pipe is not None, "built by __iter__"
        try:
            (out,) = self._pipe.run()
        except StopIteration:
            raise DataError(self.feed.error or "DALI pipeline ended before the epoch did") from None
        except RuntimeError as err:
            self._pipe = None
            files = [self.split.files[i] for index, _ in batches[k:k + self.prefetch + 1] for i in index.tolist()]
            raise DataError(decode_failure_message(files, err)) from None
        tensor = out.as_tensor()
        shape = tuple(tensor.shape())  # (B, 3, S, S)
        feed_ndarray = self._dali[3]
        if self.buffers is not None:
            return feed_ndarray(tensor, self.buffers.take(shape))
        images = torch.empty(shape, dtype=torch.float32, device=self.device)
        return feed_ndarray(tensor, images, cuda_stream=torch.cuda.current_stream(self.device))


def decode_failure_message(files, err: Exception) -> str:
    """A one-line message naming the file DALI could not decode: the first of `files` that PIL cannot
    decode either, or DALI's own first line if PIL decodes them all."""
    for path in files:
        try:
            decode_image_file(path, 1)
        except DataError as bad:
            return str(bad)
    first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return f"DALI could not decode a batch of {len(files)} images starting with {files[0]}: {first}"
