"""Benchmark the fused ops against eager PyTorch and torch.compile of their references.

Providers, side by side in one run:
  triton   the public op with the "fused" backend (torch.ops.smec_fast.*, Triton kernels on CUDA)
  torch    the pure-PyTorch reference, eager
  compile  torch.compile(reference, fullgraph=True)
Modes: fwd (forward, inputs requiring grad as in training), bwd (backward of a retained graph), fwd+bwd.

Sizes default to SMEC's 224 x 224 training setting: ResNet-18 layer4 features (B, 512, 7, 7), 1x2 pieces
(2B, 512, 7, 4), 7 classes, batches 64 and 256. GB/s counts the bytes an op cannot avoid moving (features
read once, feature gradients written once, ELR rows read and written once), so it can be set against the
device's copy bandwidth, measured in the same run (the "floor" column: time the unavoidable bytes take at
that bandwidth, over the provider's time).

On CUDA times are `triton.testing.do_bench` medians (L2 flushed between runs); `--cudagraph` replays each
call from a CUDA graph instead, which removes the host's launch overhead. On the CPU the Triton interpreter
is far too slow to time, so the triton provider is skipped and the run compares eager with compiled
references, timed with torch.utils.benchmark (median of blocked runs). Each (op, batch, mode) appends one
JSON row to bench/results/kernels.jsonl with the device, versions, git commit, config, times, GB/s and
ratios. A benchmark reports; it asserts no time.

    python bench/bench_kernels.py                       # defaults for the device found
    python bench/bench_kernels.py --batch 64 --modes fwd+bwd --ops consistency
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path

import torch

from benchenv import device_name, git_sha, versions

from smec_fast.kernels import (
    elr_cross_entropy,
    elr_cross_entropy_reference,
    kernel_backend,
    split_merge_consistency,
    split_merge_consistency_reference,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "kernels.jsonl"
PROVIDERS = ("triton", "torch", "compile")
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RAFDB_TRAIN = 12271  # rows of the ELR target table in a RAF-DB run


def resnet_map_size(pixels: int) -> int:
    """Side of ResNet-18's layer4 map for an input side: five stride-2 stages, each ceil(n / 2)."""
    for _ in range(5):
        pixels = (pixels + 1) // 2
    return pixels


def kernel_launches(fn, device: torch.device) -> int | None:
    """CUDA kernels (and memset/memcpy operations) that one call of `fn` launches, counted by torch.profiler."""
    if device.type != "cuda":
        return None
    fn()
    torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    try:
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except AttributeError:  # a profiler event without device_type
        return None


def median_ms(fn, device: torch.device, cudagraph: bool) -> float:
    """Median milliseconds of one call of `fn`."""
    if device.type == "cuda":
        import triton.testing

        if cudagraph:
            return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    from torch.utils import benchmark

    fn()  # warm-up (compilation happens here)
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=1.0).median * 1e3


def copy_bandwidth_gbs(device: torch.device) -> float | None:
    """Device-to-device copy bandwidth (read + write) in GB/s: the practical ceiling for a memory-bound op."""
    if device.type != "cuda":
        return None
    import triton.testing

    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=100, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def consistency_case(batch: int, channels: int, classes: int, size: int, grid: tuple[int, int],
                     dtype: torch.dtype, device: torch.device):
    """Inputs, the function of each provider, the tensors to differentiate, and the unavoidable bytes."""
    rows, cols = grid
    h, w = resnet_map_size(size), resnet_map_size(size)
    hp, wp = resnet_map_size(size // rows), resnet_map_size(size // cols)
    feat_org = torch.randn(batch, channels, h, w, device=device, dtype=dtype, requires_grad=True)
    feat_pieces = torch.randn(rows * cols * batch, channels, hp, wp, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(classes, channels, device=device, dtype=dtype) / math.sqrt(channels)
    inputs = (feat_org, feat_pieces, weight)

    def fused(fo, fp, wt):
        return split_merge_consistency(fo, fp, wt, grid)

    def reference(fo, fp, wt):
        return split_merge_consistency_reference(fo, fp, wt, grid)

    read = _nbytes(feat_org, feat_pieces, weight)
    written = _nbytes(feat_org, feat_pieces)  # the two feature gradients
    config = {"batch": batch, "channels": channels, "classes": classes, "image_size": size, "grid": f"{rows}x{cols}",
              "map": [h, w], "piece_map": [hp, wp], "dtype": str(dtype).removeprefix("torch."),
              "detach_weight": True}
    return config, inputs, (feat_org, feat_pieces), fused, reference, {"fwd": read, "bwd": written,
                                                                        "fwd+bwd": read + written}


def elr_case(batch: int, classes: int, dtype: torch.dtype, device: torch.device):
    logits = torch.randn(batch, classes, device=device, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), device=device)
    targets = torch.full((RAFDB_TRAIN, classes), 1.0 / classes, device=device)
    index = torch.randperm(RAFDB_TRAIN, device=device)[:batch]
    inputs = (logits, labels, targets, index)

    def fused(z, y, t, i):
        return elr_cross_entropy(z, y, t, i, 0.7, 3.0)

    def reference(z, y, t, i):
        return elr_cross_entropy_reference(z, y, t, i, 0.7, 3.0)

    rows = batch * classes * targets.element_size()
    fwd = _nbytes(logits, labels, index) + 2 * rows  # target rows read and written
    bwd = 2 * _nbytes(logits) + _nbytes(labels) + rows  # logits read, gradient written, updated rows read
    config = {"batch": batch, "classes": classes, "targets_rows": RAFDB_TRAIN,
              "dtype": str(dtype).removeprefix("torch.")}
    return config, inputs, (logits,), fused, reference, {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


def provider_fn(provider: str, fused, reference):
    if provider == "triton":
        return fused
    if provider == "torch":
        return reference
    return torch.compile(reference, fullgraph=True, dynamic=False)


def mode_fn(mode: str, fn, inputs, leaves):
    """A zero-argument callable that runs `mode` once. Gradients come from autograd.grad, so nothing
    accumulates into .grad between calls."""
    if mode == "fwd":
        return lambda: fn(*inputs)
    if mode == "fwd+bwd":
        return lambda: torch.autograd.grad(fn(*inputs), leaves)
    loss = fn(*inputs)
    return lambda: torch.autograd.grad(loss, leaves, retain_graph=True)


def run(args: argparse.Namespace, emit=None) -> list[dict]:
    """Every (op, batch, mode) row; `emit(row)`, when given, receives each row as soon as it is measured."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    providers = [p for p in args.providers if device.type == "cuda" or p != "triton"]
    if len(providers) < len(args.providers):
        print("triton provider skipped: on the CPU the Triton kernels only run in the interpreter, too slow to time")
    bandwidth = copy_bandwidth_gbs(device)
    common = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device), **versions(), "git": git_sha(), "timer": _timer_name(device, args.cudagraph),
        "copy_bandwidth_gbs": bandwidth,
        # Other processes on a shared CPU skew its timings; the load average says how busy it was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(f"# {common['device']} | torch {common['torch']} | triton {common['triton']} | git {common['git']}"
          + (f" | copy bandwidth {bandwidth:.0f} GB/s" if bandwidth else ""))
    rows = []
    for op in args.ops:
        for batch in args.batch:
            torch.manual_seed(0)
            if op == "consistency":
                config, inputs, leaves, fused, reference, nbytes = consistency_case(
                    batch, args.channels, args.classes, args.size, tuple(args.grid), dtype, device)
            else:
                config, inputs, leaves, fused, reference, nbytes = elr_case(batch, args.classes, dtype, device)
            fns = {p: provider_fn(p, fused, reference) for p in providers}
            for mode in args.modes:
                times, launches = {}, {}
                for provider in providers:
                    with kernel_backend("fused"):
                        try:
                            call = mode_fn(mode, fns[provider], inputs, leaves)
                            times[provider] = median_ms(call, device, args.cudagraph)
                            launches[provider] = kernel_launches(call, device)
                        except Exception as error:  # a provider that fails is reported, not fatal
                            print(f"  {op} b={batch} {mode} {provider}: {type(error).__name__}: {error}")
                            times[provider] = None
                rows.append(report(op, mode, config, times, launches, nbytes[mode], bandwidth, common))
                if emit is not None:
                    emit(rows[-1])
    return rows


def report(op: str, mode: str, config: dict, times: dict, launches: dict, nbytes: int, bandwidth: float | None,
           common: dict) -> dict:
    gbs = {p: nbytes / (t * 1e-3) / 1e9 for p, t in times.items() if t}
    ratios = {}
    base = "triton" if times.get("triton") else "compile"
    for p, t in times.items():
        if t and p != base and times.get(base):
            ratios[f"{p}/{base}"] = t / times[base]
    floor = {}
    if bandwidth:
        floor_ms = nbytes / (bandwidth * 1e9) * 1e3
        floor = {p: floor_ms / t for p, t in times.items() if t}
    shown = " ".join(f"{p} {t:.4f} ms ({gbs[p]:.3g} GB/s)" if t else f"{p} failed" for p, t in times.items())
    extra = " ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
    if floor:
        extra += " | floor/time " + " ".join(f"{p} {v:.2f}" for p, v in floor.items())
    if any(n is not None for n in launches.values()):
        extra += " | kernels " + " ".join(f"{p} {n}" for p, n in launches.items())
    print(f"{op:11s} b={config['batch']:<4d} {mode:8s} {shown} | {extra}", flush=True)
    return {**common, "op": op, "mode": mode, "config": config, "bytes": nbytes, "median_ms": times,
            "gb_per_s": gbs, "ratios": ratios, "floor_over_time": floor, "kernel_launches": launches}


def _timer_name(device: torch.device, cudagraph: bool) -> str:
    if device.type == "cuda":
        return "triton.testing.do_bench_cudagraph median" if cudagraph else "triton.testing.do_bench median"
    return "torch.utils.benchmark blocked_autorange median"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="+", default=["consistency", "elr"], choices=["consistency", "elr"])
    parser.add_argument("--batch", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="feature/logit dtype (default bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--size", type=int, default=224, help="input image side; features are ResNet-18 layer4")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--grid", nargs=2, type=int, default=[1, 2], metavar=("ROWS", "COLS"))
    parser.add_argument("--cudagraph", action="store_true", help="time CUDA-graph replays (no launch overhead)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON lines file the rows are appended to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def append(row: dict) -> None:  # row by row: a run cut short keeps what it measured
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    rows = run(args, emit=append)
    print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
