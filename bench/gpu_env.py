"""Where the GPU checks ran, and the two ceilings every ratio is set against: copy bandwidth and bf16 matmul rate.

One row: GPU name, driver and memory (nvidia-smi), Python, torch, torchvision, triton and DALI versions, the
git commit (with +dirty), then the device-to-device copy bandwidth (GB/s, read + write of a 1 GiB buffer) and
the bf16 matmul rate (TFLOP/s of an 8192^3 product), each the median of `triton.testing.do_bench`. On a CPU
(the dry run of gpu.sh) the same figures come from small torch operations timed on the host.

    python bench/gpu_env.py --out env.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchenv import device_name, git_sha, versions


from smec_fast.atomic import atomic_write_json


def nvidia_smi() -> dict:
    """GPU name, driver and total memory as nvidia-smi reports them (empty where it is absent)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    name, driver, memory = (part.strip() for part in line.split(","))
    return {"gpu": name, "driver": driver, "gpu_memory": memory}


def median_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def ceilings(device: torch.device, small: bool) -> dict:
    """Measured copy bandwidth (GB/s) and bf16 matmul rate (TFLOP/s)."""
    elements = (16 if small else 256) * 2**20  # fp32: 64 MiB or 1 GiB
    src = torch.empty(elements, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), device)
    n = 512 if small else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    matmul_ms = median_ms(lambda: a @ b, device)
    return {"copy_bandwidth_gbs": 2 * elements * 4 / (copy_ms * 1e-3) / 1e9, "copy_bytes": 2 * elements * 4,
            "bf16_matmul_tflops": 2 * n**3 / (matmul_ms * 1e-3) / 1e12, "matmul_n": n}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="small buffers (the CPU dry run)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    row = {"device": device.type, "device_name": device_name(device), **nvidia_smi(), **versions(),
           "git": git_sha(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row.update(compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   memory_gib=props.total_memory / 2**30)
    atomic_write_json(args.out, [row])  # what is known before timing anything
    row.update(ceilings(device, args.small))
    atomic_write_json(args.out, [row])
    for key, value in row.items():
        print(f"{key:22s} {value:.4g}" if isinstance(value, float) else f"{key:22s} {value}")
    return row


if __name__ == "__main__":
    main()
