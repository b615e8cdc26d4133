"""Images per second of each loader kind (torch reference, DALI, device cache), side by side in one run.

Each loader reads the same images (the first --limit files of FER2013's training split, class folders in
sorted order, or of a RAF-DB tree's with --dataset rafdb), with the same batch size and the same number of
workers (DataLoader processes, DALI threads,
cache decoding threads), as training batches: shuffled, half flipped, normalised float32 (B, 3, S, S) on the
device. One untimed warm-up epoch per loader absorbs pipeline building and first-touch costs; then the loaders
take turns for --epochs timed epochs each (interleaving spreads any drift of a shared machine over all of
them), and the median epoch is reported; the ratio to the torch loader is the median over rounds of the
ratio within a round. Building the loader (for the cache: decoding every image once) is timed apart as
setup_s. GPU timings end with a device synchronisation. The machine's load average is recorded at the start
and after each (device, size) group: on a shared machine, other jobs' load changes the figures.

    python bench/bench_data.py                       # CPU rows (and GPU rows where CUDA is present)
    python bench/bench_data.py --devices cuda --limit 0 --out $OUT/data_gpu.json
    python bench/bench_data.py --dataset rafdb --data /tmp/rafdb --devices cuda --sizes 224 --limit 0

Prints a table with the ratio of each loader to the torch loader and writes the rows as a JSON list (after
every (device, size) group, so an interrupted run keeps what it measured).
A benchmark reports; it asserts no speed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchenv import REPO, ResultsFile, device_name, git_sha, versions


from smec_fast.data import load_folder, load_rafdb
from smec_fast.data.dali import dali_available
from smec_fast.data.loaders import make_loader


def default_data() -> Path:
    for candidate in (os.environ.get("SMEC_SHARED"), REPO.parent / "shared", Path("/work/shared")):
        if candidate and (Path(candidate) / "data" / "fer2013").is_dir():
            return Path(candidate) / "data" / "fer2013"
    return REPO.parent / "shared" / "data" / "fer2013"


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages: other processes' share of the CPUs during the run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def time_epoch(loader, epoch: int, device: torch.device) -> tuple[int, float]:
    """(images, seconds) of one full epoch."""
    loader.set_epoch(epoch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    n = 0
    for images, _, _ in loader:
        n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n, time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data(),
                        help="class-folder dataset (train/ inside), or a RAF-DB tree with --dataset rafdb")
    parser.add_argument("--dataset", choices=["folder", "rafdb"], default="folder")
    parser.add_argument("--limit", type=int, default=3000, help="first N training images (0: all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (after one warm-up)")
    parser.add_argument("--loaders", default="torch,dali,cached")
    parser.add_argument("--devices", default="auto", help="comma list of cpu/cuda; auto: cpu, plus cuda if present")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_cpu.json")
    args = parser.parse_args(argv)

    split = load_rafdb(args.data, "train") if args.dataset == "rafdb" else load_folder(args.data, "train")
    total = len(split)
    if args.limit and args.limit < total:
        split = split.subset(torch.arange(args.limit))
    source = args.data if args.dataset == "rafdb" else args.data / "train"
    subset = (f"first {len(split)} of {total} training images of {source}" if len(split) < total
              else f"all {total} training images of {source}")
    devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto"
               else args.devices.split(","))
    kinds = args.loaders.split(",")
    if "dali" in kinds and not dali_available():
        print("NVIDIA DALI is not installed: no dali rows", file=sys.stderr)
        kinds.remove("dali")
    common = {
        "batch_size": args.batch_size, "num_workers": args.num_workers, "torch_threads": torch.get_num_threads(),
        "timed_epochs": args.epochs, "subset": subset, "versions": versions(), "git": git_sha(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_average(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(subset)
    results = ResultsFile(args.out)
    rows = []
    for device_str in devices:
        device = torch.device(device_str)
        for size in args.sizes:
            loaders, setup = {}, {}
            for kind in kinds:
                start = time.perf_counter()
                loaders[kind] = make_loader(kind, split, size, args.batch_size, device, train=True, seed=0,
                                            num_workers=args.num_workers)
                setup[kind] = time.perf_counter() - start
                time_epoch(loaders[kind], 0, device)  # warm-up
            rates: dict[str, list[float]] = {kind: [] for kind in kinds}
            count = {}
            for epoch in range(1, args.epochs + 1):
                for kind in kinds:
                    n, seconds = time_epoch(loaders[kind], epoch, device)
                    rates[kind].append(n / seconds)
                    count[kind] = n
            for kind in kinds:
                rows.append({"loader": kind, "device": device.type, "device_name": device_name(device),
                             "image_size": size, "images_per_s": round(statistics.median(rates[kind]), 1),
                             "epoch_images_per_s": [round(r, 1) for r in rates[kind]],
                             "images_per_epoch": count[kind], "setup_s": round(setup[kind], 3),
                             "load_average_at_end": load_average(), **common})
            del loaders
            results.write(rows)

    print(f"\n{'loader':8} {'device':6} {'size':>5} {'images/s':>10} {'x torch':>8} {'setup s':>8}")
    for row in rows:
        base = next((r for r in rows if r["loader"] == "torch" and r["device"] == row["device"]
                     and r["image_size"] == row["image_size"]), None)
        # Ratio per round (the loaders of one round ran back to back), then the median over rounds: a shared
        # machine's load changes between rounds far more than within one.
        row["ratio_vs_torch"] = round(statistics.median(
            a / b for a, b in zip(row["epoch_images_per_s"], base["epoch_images_per_s"])), 2) if base else None
        ratio = f"{row['ratio_vs_torch']:.2f}" if base else "-"
        print(f"{row['loader']:8} {row['device']:6} {row['image_size']:>5} {row['images_per_s']:>10.0f} "
              f"{ratio:>8} {row['setup_s']:>8.2f}")
    results.write(rows)
    print(f"\n{results.describe(rows)}")
    return rows


if __name__ == "__main__":
    main()
