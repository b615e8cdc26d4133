"""Choosing and making a batch loader: `torch` (DataLoader + PIL, the reference), `dali` or `cached`.

Every kind has SplitLoader's interface and yields the same batches (torch_loader.epoch_batches) for the same
(seed, epoch): (images (B, 3, S, S) float32 normalised, labels (B,) int64, index (B,) int64) on the device.
"""

from __future__ import annotations

import logging

import psutil
import torch

from smec_fast.errors import ConfigError

from .cache import CachedLoader, cache_bytes
from .dali import DaliLoader, dali_available, dali_problem
from .torch_loader import SplitLoader
from .image_split import ImageSplit

log = logging.getLogger(__name__)

LOADER_KINDS = ("torch", "dali", "cached")
# Share of the free device memory (or the available host memory) the cached loader may take when it is chosen
# by default; the rest is left to the model, its activations and the optimizer.
CACHE_MEMORY_SHARE = 0.25


def default_loader(device: torch.device | str, split: ImageSplit, image_size: int = 224) -> str:
    """The fastest loader kind for `split` on `device`, by this project's measurements.

    bench/bench_data.py on the 2-core CPU machine, first 3,000 FER2013 training images, batch 64, 2 workers
    (DataLoader processes / DALI threads / cache decoding threads), images/s (ratio to torch):

        machine otherwise idle (load average < 1):    torch      dali             cached
            size 112                                  2,063      5,388 (2.6x)     22,100 (10.7x)
            size 224                                    686      2,984 (4.4x)      7,074 (10.3x)
        other jobs on both cores (load 2.6 to 6.7; bench/results/data_cpu.json):
            size 112                                    585      2,675 (4.3x)        920 (1.6x)
            size 224                                    366      1,136 (3.3x)        670 (1.9x)

    The cached path makes batches with torch's intra-op threads, which stall when other processes hold
    the cores; DALI's own threads degrade less. A training process is the one busy process on its machine
    and runs the model between batches in those same threads, so the idle-machine figures apply: on the CPU
    "cached", unless the uint8 cache would take more than CACHE_MEMORY_SHARE of the memory the OS can give
    (available_host_memory). On a GPU
    the cached path only gathers, flips and resizes batches already in device memory, with no decoding per
    epoch, so it is chosen under the same memory rule, else "dali" (GPU decoding) when it is installed,
    else the reference loader. (No GPU figures yet: the loaders stage of bench/gpu.sh measures them.) In-memory splits (the synthetic dataset) are already device-resident: "torch".
    """
    device = torch.device(device)
    if split.images is not None:
        return "torch"
    free: int | None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = available_host_memory()
    if free is None or cache_bytes(split, image_size) <= CACHE_MEMORY_SHARE * free:
        return "cached"
    if not dali_available():
        return "torch"
    problem = next((p for p in map(dali_problem, split.files) if p is not None), None)
    if problem is not None:
        log.info("the torch loader, not DALI: a file of the split holds %s, which DALI decodes otherwise", problem)
        return "torch"
    return "dali"


def available_host_memory() -> int | None:
    """Bytes of memory the OS can give a process without swapping (Linux: MemAvailable, which counts the page
    cache it can drop), or None where it does not say. The free-page count is no guide: on a 24 GiB
    machine after a few runs it read 819 MiB free against 22.7 GiB available."""
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


def make_loader(kind: str, split: ImageSplit, image_size: int, batch_size: int, device: torch.device | str,
                train: bool, seed: int = 0, num_workers: int = 2, shard_id: int = 0, num_shards: int = 1,
                hflip: bool = True):
    """A loader of the given kind ("torch", "dali", "cached" or "auto" for default_loader's choice).

    All take the same arguments: the split, the square training size, the batch size, the training device,
    train (shuffle, flip half, drop the last incomplete batch) or not (split order, no flips, keep the last
    partial batch), the seed of the per-epoch order and flips (`hflip=False`: the same order, no flips), the workers (DataLoader processes, DALI
    threads, or the cache's decoding processes), and this process's shard of the data.
    """
    device = torch.device(device)
    if kind == "auto":
        kind = default_loader(device, split, image_size)
    if kind not in LOADER_KINDS:
        raise ConfigError(f"--loader must be one of {', '.join(LOADER_KINDS)} or auto, got {kind!r}")
    args = dict(split=split, image_size=image_size, batch_size=batch_size, device=device, train=train, seed=seed,
                num_workers=num_workers, shard_id=shard_id, num_shards=num_shards)
    if kind == "dali" and split.images is not None:
        log.info("the split is held in memory, with no image files for DALI to read: using the torch loader, "
                 "which keeps it on the device")
        kind = "torch"
    loader = {"dali": DaliLoader, "cached": CachedLoader}.get(kind, SplitLoader)(**args)
    loader.hflip = hflip
    return loader
