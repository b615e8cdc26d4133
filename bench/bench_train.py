"""Training-step cost of SMEC against plain cross-entropy on the same model, batch and image size.

For each method (ce, smec), batch size and mode (eager, torch.compile of model + loss) it times whole
optimizer steps on device-resident random images (the loader is benchmarked by bench_data.py), counts the
FLOPs of one step with torch.utils.flop_counter, and prints the measured SMEC / CE time ratio next to the
FLOP ratio (SMEC runs the two halves as well: about twice CE's work). Rows are written as JSON:
method, device, image_size, batch_size, compiled, step_ms, images_per_s, flops_per_step, and the time of one
RAF-DB-sized epoch (12,271 images) at that speed.

    python bench/bench_train.py                       # CPU: 64 px, batch 32, fp32
    python bench/bench_train.py --device cuda         # GPU: 224 px, batch 64 and 256, bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from smec_fast.config import resolve_config
from smec_fast.methods import build_method
from smec_fast.model import FerResNet18
from smec_fast.trainer import TrainingObjective, autocast_context

REPO = Path(__file__).resolve().parents[1]
RAFDB_TRAIN_IMAGES = 12271


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_step(method_name: str, batch: int, size: int, device: torch.device, compiled: bool):
    """(step function, objective) for one configuration, on random images of the given size."""
    torch.manual_seed(0)
    cfg = resolve_config(cli_values={"method": method_name, "image_size": size, "dataset": "rafdb", "data": "-"})
    n = 4 * batch
    labels = torch.randint(0, 7, (n,))
    model = FerResNet18(7)
    method = build_method(cfg, labels, 7, 0.0)
    objective = TrainingObjective(model, method).to(device)
    if device.type == "cuda":
        objective = objective.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")
    images = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    y = labels[:batch].to(device)
    index = torch.arange(batch, device=device)
    forward = torch.compile(objective) if compiled else objective

    def step():
        with autocast_context(device, "bf16"):
            loss, _ = forward(images, y, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def flops() -> int:
        counter = FlopCounterMode(display=False)
        with counter, autocast_context(device, "bf16"):
            loss, _ = objective(images, y, index)
            loss.backward()
        optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    return step, flops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, warmup: int, steps: int, repeats: int) -> float:
    """Median over `repeats` of the mean step time in ms, after `warmup` steps (which absorb compilation)."""
    for _ in range(warmup):
        step()
    sync(device)
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        means.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch", type=int, nargs="+")
    parser.add_argument("--methods", nargs="+", default=["ce", "smec"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    size = args.image_size or (224 if gpu else 64)
    batches = args.batch or ([64, 256] if gpu else [32])
    out = args.out or REPO / "bench" / "results" / f"train_{device.type}.json"
    env = {"device_name": torch.cuda.get_device_name(device) if gpu else f"cpu: {platform.machine()}, "
           f"{torch.get_num_threads()} threads", "torch": torch.__version__, "python": platform.python_version(),
           "git": git_sha(), "precision": "bf16 autocast" if gpu else "fp32"}
    print(f"# {env['device_name']} | torch {env['torch']} | git {env['git']} | {env['precision']}")
    rows = []
    for batch in batches:
        for mode in args.modes:
            for method in args.methods:
                step, flops = make_step(method, batch, size, device, mode == "compiled")
                ms = time_steps(step, device, args.warmup + (2 if mode == "compiled" else 0), args.steps, args.repeats)
                row = {"method": method, "device": device.type, "image_size": size, "batch_size": batch,
                       "compiled": mode == "compiled", "step_ms": ms, "images_per_s": batch / ms * 1000,
                       "flops_per_step": flops(), "rafdb_epoch_s": RAFDB_TRAIN_IMAGES / (batch / ms * 1000), **env}
                rows.append(row)
                print(f"{method:5s} b={batch:<4d} {mode:8s} {ms:9.2f} ms/step {row['images_per_s']:9.1f} img/s "
                      f"{row['flops_per_step'] / 1e9:8.2f} GFLOP/step  RAF-DB epoch {row['rafdb_epoch_s']:7.1f} s")
    for batch in batches:
        for mode in args.modes:
            pick = {r["method"]: r for r in rows if r["batch_size"] == batch and r["compiled"] == (mode == "compiled")}
            if "ce" in pick and "smec" in pick:
                time_ratio = pick["smec"]["step_ms"] / pick["ce"]["step_ms"]
                flop_ratio = pick["smec"]["flops_per_step"] / pick["ce"]["flops_per_step"]
                print(f"b={batch} {mode}: smec/ce time {time_ratio:.2f}x, FLOPs {flop_ratio:.2f}x, "
                      f"time / FLOP ratio {time_ratio / flop_ratio:.2f}")
                for r in (pick["smec"],):
                    r["time_ratio_to_ce"], r["flop_ratio_to_ce"] = time_ratio, flop_ratio
    eager = {(r["method"], r["batch_size"]): r for r in rows if not r["compiled"]}
    for r in rows:
        if r["compiled"] and (r["method"], r["batch_size"]) in eager:
            r["speedup_over_eager"] = eager[(r["method"], r["batch_size"])]["step_ms"] / r["step_ms"]
            print(f"{r['method']} b={r['batch_size']}: compiled {r['speedup_over_eager']:.2f}x eager")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
