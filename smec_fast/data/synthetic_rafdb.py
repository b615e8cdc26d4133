"""The embedded synthetic faces written to disk as a RAF-DB tree, so that the `rafdb` dataset path (label file,
aligned JPEGs, validation, every loader's decoding) runs without RAF-DB's images:

    OUT/basic/EmoLabel/list_patition_label.txt      train_00001.jpg 5   (1-based labels, RAF-DB's class order)
    OUT/basic/Image/aligned/train_00001_aligned.jpg (size x size JPEG)

The default sizes are RAF-DB's: 12,271 training and 3,068 test faces of 100 x 100 px in its class
proportions. Chunks of faces are drawn and encoded in parallel processes, each from a generator seeded by
(seed, split, chunk), so the files do not depend on the number of workers. The label file is written last
(atomically): a tree without it is an interrupted write, not a dataset.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from PIL import Image

from smec_fast.atomic import atomic_write_text

from .rafdb import ALIGNED_DIR, LABEL_FILE
from .synthetic import RAFDB_TEST_COUNTS, RAFDB_TRAIN_COUNTS, class_counts, render_faces

RAFDB_TRAIN_SIZE = 12271
RAFDB_TEST_SIZE = 3068
CHUNK = 256  # faces drawn and encoded per task


def _chunk_seed(seed: int, split: str, chunk: int) -> int:
    return (seed * 1_000_003 + (17 if split == "train" else 29)) * 100_003 + chunk


def _split_labels(split: str, total: int, seed: int) -> torch.Tensor:
    """(total,) labels in RAF-DB's class proportions, in a seeded order."""
    proportions = RAFDB_TRAIN_COUNTS if split == "train" else RAFDB_TEST_COUNTS
    labels = torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(class_counts(total, proportions))])
    return labels[torch.randperm(total, generator=torch.Generator().manual_seed(_chunk_seed(seed, split, -1)))]


def _write_chunk(task: tuple[str, int, list[str], torch.Tensor, int, int, int]) -> int:
    """Draw and encode one chunk of faces; returns the number of files written."""
    image_dir, chunk, names, labels, size, seed, quality = task
    torch.set_num_threads(1)  # one process per core already
    split = "train" if names[0].startswith("train") else "test"
    faces = render_faces(labels, size, torch.Generator().manual_seed(_chunk_seed(seed, split, chunk)))
    pixels = faces.permute(0, 2, 3, 1).contiguous().numpy()  # (n, size, size, 3) uint8
    for name, image in zip(names, pixels):
        Image.fromarray(image).save(Path(image_dir) / f"{Path(name).stem}_aligned.jpg", quality=quality)
    return len(names)


def write_synthetic_rafdb(out: str | Path, train: int = RAFDB_TRAIN_SIZE, test: int = RAFDB_TEST_SIZE,
                          size: int = 100, seed: int = 0, workers: int | None = None, quality: int = 95) -> dict:
    """Write a RAF-DB tree of synthetic faces under `out`; returns what was written."""
    if train < 1 or test < 1:
        raise ValueError(f"need at least one training and one test face, got --train {train} --test {test}")
    out = Path(out)
    image_dir = out / ALIGNED_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    tasks, lines = [], []
    for split, total in (("train", train), ("test", test)):
        labels = _split_labels(split, total, seed)
        digits = max(5 if split == "train" else 4, len(str(total)))
        names = [f"{split}_{i + 1:0{digits}d}.jpg" for i in range(total)]
        lines += [f"{name} {int(label) + 1}" for name, label in zip(names, labels)]
        tasks += [(str(image_dir), i // CHUNK, names[i:i + CHUNK], labels[i:i + CHUNK], size, seed, quality)
                  for i in range(0, total, CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    if workers == 1:
        written = sum(map(_write_chunk, tasks))
    else:
        # spawn: a forked child of a process whose torch threads are running can hang
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            written = sum(pool.map(_write_chunk, tasks))
    atomic_write_text(out / LABEL_FILE, "\n".join(lines) + "\n")
    return {"root": str(out), "train": train, "test": test, "files": written, "image_size": size, "seed": seed}


__all__ = ["RAFDB_TEST_SIZE", "RAFDB_TRAIN_SIZE", "write_synthetic_rafdb"]
