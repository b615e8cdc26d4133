"""Training-step cost of SMEC against plain cross-entropy, and of this trainer against a plain implementation.

Three ways to run the same optimizer step, on the same model, batch and image size:

    plain     as public FER code is written: one forward per view (the original image, then each flipped
              piece on its own), pure-PyTorch losses, the default (foreach) Adam; fp32 NCHW unless asked
    eager     this trainer's step without compilation: all pieces in one batched forward, the fused ops,
              the fused Adam
    compiled  the eager step with model and loss under torch.compile (the trainer's default on CUDA)

Each way runs in every precision (`--amp`: off = fp32, bf16 autocast) and layout (`--channels-last`) asked
for. Defaults: on CUDA plain in fp32 NCHW and the others in bf16 channels_last, 224 px, batches 64 and
256; on a CPU plain and eager in all four of fp32 / bf16 x NCHW / NHWC, 64 and 112 px, batch 64 (fp32 NCHW and
NHWC only where bf16 is not native: emulated, it is slower than fp32, and `--amp bf16` still asks for it). Every
row's `speedup_over_plain` is against plain fp32 NCHW on the same kind of input.

Step timings run on device-resident random images, so they measure the step alone. FLOPs of one step come
from torch.utils.flop_counter (which counts nothing inside the registered fused ops: their W contraction is
about 1e-4 of a step); the SMEC / CE time ratio is printed next to the FLOP ratio (SMEC runs the
pieces as well: about twice CE's work), and a time / FLOP ratio near 1 means SMEC costs only its arithmetic.

With --data (a class-folder dataset such as FER2013), each way also trains from its loader: plain from the
PIL DataLoader, eager and compiled from the loader the trainer picks for the device (the device-resident
cache where it fits). That images/s ratio is the end-to-end comparison.

    python bench/bench_train.py                                # CPU: 64 and 112 px, batch 64
    python bench/bench_train.py --device cuda --data DIR       # GPU: 224 px, batch 64 and 256, + end to end

Rows (JSON list): method, mode, device, image_size, batch_size, amp, compiled, channels_last, data ("random"
or the loader), step_ms, images_per_s, flops_per_step, rafdb_epoch_s (one RAF-DB-sized epoch, 12,271
images, at that speed), the ratios, and where it ran (device, versions, processor features, git commit),
added after the rows earlier runs left in the file. A benchmark reports; it asserts no speed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchenv import REPO, ResultsFile, cpu_features, device_name, git_sha, versions


from smec_fast.config import resolve_config
from smec_fast.errors import ConfigError
from smec_fast.data import load_folder
from smec_fast.data.loaders import default_loader, make_loader
from smec_fast.kernels import kernel_backend
from smec_fast.methods import build_method, narrowest_input_width
from smec_fast.model import FerResNet18
from smec_fast.precision import autocast_context, describe_cpu, resolve_precision
from smec_fast.split_merge import split_and_flip
from smec_fast.trainer import TrainingObjective

RAFDB_TRAIN_IMAGES = 12271
MODES = ("plain", "eager", "compiled")


class PlainObjective(TrainingObjective):
    """The step as public FER code writes it: one forward per view and the pure-PyTorch losses."""

    def forward(self, images, labels, index):
        with kernel_backend("reference"):
            if self.method.name != "smec":
                return self.method(self.model, images, labels, index)
            logits, feat = self.model(images)
            b = images.shape[0]
            pieces = split_and_flip(images, self.method.consistency.grid)
            feat_pieces = torch.cat([self.model(pieces[i:i + b])[1] for i in range(0, pieces.shape[0], b)])
            loss_cls = self.method.elr(logits, labels, index)
            loss_con = self.method.consistency(feat, feat_pieces, self.model.cam_weight)
            return loss_cls + self.method.lambda_con * loss_con, {}


class Step:
    """One optimizer step of `method` done the `mode` way, in precision `amp` ("off" or "bf16") and layout
    `channels_last` ("on" or "off"), at `image_size`; `flops()` counts the FLOPs of one step."""

    def __init__(self, method_name: str, mode: str, labels: torch.Tensor, device: torch.device, amp: str,
                 channels_last: str, image_size: int):
        torch.manual_seed(0)
        cfg = resolve_config(cli_values={"method": method_name, "dataset": "rafdb", "data": "-",
                                         "image_size": image_size})
        # The trainer's own checks: a precision this device cannot train in is refused here too.
        precision = resolve_precision(amp, channels_last, device, narrowest_input_width(cfg))
        model = FerResNet18(7)
        method = build_method(cfg, labels, 7, 0.0)
        fast = mode != "plain"
        self.device = device
        self.amp = precision.amp
        self.channels_last = precision.channels_last
        objective = (TrainingObjective if fast else PlainObjective)(model, method).to(device)
        if self.channels_last:
            objective = objective.to(memory_format=torch.channels_last)
        self.objective = objective
        self.forward = torch.compile(objective) if mode == "compiled" else objective
        self.optimizer = torch.optim.Adam(objective.parameters(), lr=1e-4, weight_decay=1e-4,
                                          fused=fast)

    def __call__(self, images, labels, index) -> None:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.amp):
            loss, _ = self.forward(images, labels, index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def flops(self, images, labels, index) -> int:
        counter = FlopCounterMode(display=False)
        with counter, autocast_context(self.device, self.amp):
            loss, _ = self.objective(images, labels, index)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def way_name(row: dict) -> str:
    precision = "fp32" if row["amp"] == "off" else row["amp"]
    return f"{row['mode']:8s} {precision} {'NHWC' if row['channels_last'] else 'NCHW'}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_random(step: Step, batch, warmup: int, steps: int, repeats: int) -> float:
    """Median over `repeats` of the mean step time in ms on one device-resident batch, after `warmup` steps
    (which absorb compilation)."""
    for _ in range(warmup):
        step(*batch)
    sync(step.device)
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step(*batch)
        sync(step.device)
        means.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(means)


def loader_batches(loader):
    """Training batches without end: epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_loader(step: Step, batches, warmup: int, steps: int) -> float:
    """Mean ms per step over `steps` steps fed by the loader (waiting for data included), after `warmup`."""
    for _ in range(warmup):
        step(*next(batches))
    sync(step.device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    sync(step.device)
    return (time.perf_counter() - start) / steps * 1000


def default_ways(gpu: bool, mode: str, amp: list[str] | None, channels_last: list[str] | None,
                 native_bf16: bool = True):
    """(amp, channels_last) pairs a way runs in: the flags' product, or the device's defaults (on a CPU without
    native bf16, fp32 only: emulated bf16 is slower than fp32 there, and `--amp bf16` still asks for it)."""
    fast = mode != "plain"
    amps = amp or (["bf16" if fast else "off"] if gpu else ["off", "bf16"] if native_bf16 else ["off"])
    layouts = channels_last or (["on" if fast else "off"] if gpu else ["off", "on"])
    return list(itertools.product(amps, layouts))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, nargs="+", help="default: 224 on CUDA, 64 112 on the CPU")
    parser.add_argument("--batch", type=int, nargs="+", help="default: 64 256 on CUDA, 64 on the CPU")
    parser.add_argument("--methods", nargs="+", default=["ce", "smec"], choices=["ce", "smec"])
    parser.add_argument("--modes", nargs="+", choices=MODES,
                        help="default: all three on CUDA, plain and eager on the CPU")
    parser.add_argument("--amp", nargs="+", choices=["off", "bf16"],
                        help="precisions every way runs in (default: CUDA plain off, others bf16; CPU both where bf16 "
                             "is native, else off)")
    parser.add_argument("--channels-last", nargs="+", choices=["on", "off"],
                        help="layouts every way runs in (default: CUDA plain off, others on; CPU both)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, help="class-folder dataset (train/ inside): also time from loaders")
    parser.add_argument("--limit", type=int, default=3000, help="--data: first N training images (0: all)")
    parser.add_argument("--loader-steps", type=int, default=20, help="--data: timed steps per row")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    sizes = args.image_size or ([224] if gpu else [64, 112])
    batches = args.batch or ([64, 256] if gpu else [64])
    modes = args.modes or (list(MODES) if gpu else ["plain", "eager"])
    out = args.out or REPO / "bench" / "results" / f"train_{device.type}.json"
    results = ResultsFile(out)
    env = {"device_name": device_name(device), **versions(), "git": git_sha(),
           "command": shlex.join([Path(sys.executable).name, *sys.argv]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    native_bf16 = True
    if not gpu:
        env["cpu"] = cpu_features()
        native_bf16 = env["cpu"]["native_bf16"]
    print(f"# {env['device_name']} | torch {env['torch']} | git {env['git']}"
          + (f" | {describe_cpu()}" if not gpu else ""))
    if not gpu and not native_bf16 and not args.amp:
        print("# no native bf16 on this CPU: the emulated-bf16 rows are skipped (slower than fp32 here); "
              "--amp off bf16 runs them")
    rows = []

    def record(row: dict) -> None:
        row.update(images_per_s=row["batch_size"] / row["step_ms"] * 1000, **env)
        row["rafdb_epoch_s"] = RAFDB_TRAIN_IMAGES / row["images_per_s"]
        rows.append(row)
        results.write(rows)  # row by row: a run cut short keeps what it measured
        print(f"{row['method']:5s} {row['image_size']:4d} px b={row['batch_size']:<4d} {way_name(row)} "
              f"{row['data']:7s} {row['step_ms']:9.2f} ms/step {row['images_per_s']:9.1f} img/s "
              f"{row['flops_per_step'] / 1e9:8.2f} GFLOP/step  RAF-DB epoch {row['rafdb_epoch_s']:7.1f} s",
              flush=True)

    split = None
    if args.data:
        split = load_folder(args.data, "train")
        if args.limit and args.limit < len(split):
            split = split.subset(torch.arange(args.limit))
    # Way by way, the cheap ones first: a run cut short (gpu.sh gives each stage a time budget) has the plain and
    # eager rows of every size before the compiled ones, which spend most of their time compiling.
    for mode in modes:
        for size, batch in itertools.product(sizes, batches):
            labels = torch.randint(0, 7, (4 * batch,), generator=torch.Generator().manual_seed(0))
            random_batch = (torch.randn(batch, 3, size, size, device=device), labels[:batch].to(device),
                            torch.arange(batch, device=device))
            for amp, layout in default_ways(gpu, mode, args.amp, args.channels_last, native_bf16):
                for method in args.methods:
                    try:
                        step = Step(method, mode, labels, device, amp, layout, size)
                    except ConfigError as refused:  # a precision the trainer refuses here (too narrow for bf16)
                        print(f"# {method} {size} px {mode} {amp} skipped: {refused}", flush=True)
                        continue
                    flops = step.flops(*random_batch)
                    warmup = args.warmup + (2 if mode == "compiled" else 0)
                    ms = time_random(step, random_batch, warmup, args.steps, args.repeats)
                    common = {"method": method, "mode": mode, "device": device.type, "image_size": size,
                              "batch_size": batch, "amp": step.amp, "compiled": mode == "compiled",
                              "channels_last": step.channels_last, "flops_per_step": flops}
                    record({**common, "data": "random", "step_ms": ms})
                    if split is None:
                        continue
                    kind = "torch" if mode == "plain" else default_loader(device, split, size)
                    loader = make_loader(kind, split, size, batch, device, train=True, num_workers=args.num_workers)
                    step = Step(method, mode, split.labels, device, amp, layout, size)  # ELR state for the dataset
                    ms = time_loader(step, loader_batches(loader), warmup, args.loader_steps)
                    record({**common, "data": kind, "step_ms": ms, "num_workers": args.num_workers,
                            "dataset": f"{len(split)} images of {args.data / 'train'}"})
                    del loader

    print()
    same_setting = ("image_size", "batch_size", "mode", "amp", "channels_last")
    for row in rows:
        same = {r["method"]: r for r in rows if all(r[k] == row[k] for k in same_setting)
                and (r["data"] == "random") == (row["data"] == "random")}
        if row["method"] == "smec" and "ce" in same:
            row["time_ratio_to_ce"] = row["step_ms"] / same["ce"]["step_ms"]
            row["flop_ratio_to_ce"] = row["flops_per_step"] / same["ce"]["flops_per_step"]
            print(f"smec/ce {row['image_size']:4d} px b={row['batch_size']} {way_name(row)} {row['data']:7s}: time "
                  f"{row['time_ratio_to_ce']:.2f}x, FLOPs {row['flop_ratio_to_ce']:.2f}x, time / FLOP ratio "
                  f"{row['time_ratio_to_ce'] / row['flop_ratio_to_ce']:.2f}")
    for row in rows:  # against plain fp32 NCHW on the same kind of input: random images, or a loader
        plain = next((r for r in rows if r["mode"] == "plain" and r["amp"] == "off" and not r["channels_last"]
                      and all(r[k] == row[k] for k in ("method", "image_size", "batch_size"))
                      and (r["data"] == "random") == (row["data"] == "random")), None)
        if plain is not None and row is not plain:
            row["speedup_over_plain"] = row["images_per_s"] / plain["images_per_s"]
            print(f"{row['method']:5s} {row['image_size']:4d} px b={row['batch_size']} {way_name(row)} "
                  f"{row['data']:7s}: {row['speedup_over_plain']:.2f}x the images/s of plain fp32 NCHW "
                  f"({plain['data']})")
    results.write(rows)
    print(results.describe(rows))
    return rows


if __name__ == "__main__":
    main()
