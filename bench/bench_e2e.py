"""End to end: `smec-fast train` on a RAF-DB tree, the trainer's default way against the plain way.

Runs the CLI twice on the same data and options: once with the defaults for the device (on CUDA: compiled,
bf16, channels_last, fused Triton ops, the auto-chosen loader), once with `--compile off --kernels reference
--loader torch`. Each row holds every epoch's wall time, training time, images/s, input wait and evaluation
time from the run's metrics.json, and, for the last epoch (the first also pays for compiling and warm-up),
the TFLOP/s that its images/s implies (FLOPs of one SMEC training image, counted by
torch.utils.flop_counter) and, for a run that trained in bf16, that rate's share of the measured bf16 matmul
rate (from gpu_env.py's row).
The rows go after those earlier runs left in `--out`.

    python -m smec_fast synth-rafdb /tmp/rafdb                 # RAF-DB-sized synthetic tree
    python bench/bench_e2e.py --data /tmp/rafdb --env env.json --out e2e.json

A benchmark reports; it asserts no speed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchenv import ResultsFile, device_name, git_sha, versions

WAYS = {"default": [], "plain": ["--compile", "off", "--kernels", "reference", "--loader", "torch"]}


def flops_per_image(device: torch.device, image_size: int, amp: str) -> float:
    """FLOPs of one SMEC training step per image (forward, backward; Adam not counted)."""
    from bench_train import Step

    batch = 8
    labels = torch.randint(0, 7, (batch,), generator=torch.Generator().manual_seed(0))
    step = Step("smec", "eager", labels, device, amp, "off", image_size)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    return step.flops(images, labels.to(device), torch.arange(batch, device=device)) / batch


def run_way(way: str, args, work: Path) -> dict:
    out = work / way
    command = [sys.executable, *(["-P"] if sys.flags.safe_path else []), "-m", "smec_fast", "train",
               "--dataset", "rafdb", "--data", str(args.data), "--out", str(out), "--epochs", str(args.epochs),
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--device", args.device,
               "--num-workers", str(args.num_workers), "--progress", "false", *WAYS[way], *args.extra]
    print("$", shlex.join(command), flush=True)
    finished = subprocess.run(command, capture_output=True, text=True)
    tail = (finished.stdout + finished.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    if finished.returncode != 0:
        return {"way": way, "command": shlex.join(command), "rc": finished.returncode, "log_tail": tail}
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = [{"epoch": h["epoch"], "time_s": h["time_s"], **{k: h["throughput"][k] for k in
              ("train_s", "images", "images_per_s", "data_wait_share", "step_share", "eval_s", "peak_memory_mib")}}
              for h in metrics["history"]]
    return {"way": way, "command": shlex.join(command), "rc": 0, "epochs": epochs, "precision": metrics["precision"],
            "loader": metrics["loader"], "compiled": metrics["compiled"], "kernels": metrics["config"]["kernels"],
            "num_train": metrics["num_train"], "num_test": metrics["num_test"],
            "final_accuracy": metrics["final_accuracy"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="RAF-DB tree (smec-fast synth-rafdb writes one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--env", type=Path, help="gpu_env.py's JSON: sets the TFLOP/s against its bf16 matmul rate")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more options for every run")
    args = parser.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    device = torch.device(args.device)
    matmul = None
    if args.env and args.env.is_file():
        matmul = json.loads(args.env.read_text())[0].get("bf16_matmul_tflops")
    common = {"device": device.type, "device_name": device_name(device), **versions(), "git": git_sha(),
              "image_size": args.image_size, "batch_size": args.batch_size, "data": str(args.data),
              "bf16_matmul_tflops": matmul}
    results = ResultsFile(args.out)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="smec-e2e-") as work:
        for way in args.ways:
            row = {**run_way(way, args, Path(work)), **common}
            if row["rc"] == 0:
                last = row["epochs"][-1]
                row["flops_per_image"] = flops_per_image(device, args.image_size, row["precision"]["amp"])
                row["tflops"] = row["flops_per_image"] * last["images_per_s"] / 1e12
                # The bf16 matmul rate bounds a run that computes in bf16; an fp32 run has another ceiling.
                in_bf16 = row["precision"]["amp"] == "bf16"
                row["share_of_matmul_rate"] = row["tflops"] / matmul if matmul and in_bf16 else None
                share = ""
                if row["share_of_matmul_rate"] is not None:
                    share = f" = {100 * row['share_of_matmul_rate']:.1f} % of the bf16 matmul rate"
                elif matmul:
                    share = f" (trained in {row['precision']['amp']}: no share of the bf16 matmul rate)"
                print(f"{way:8s} epoch {last['epoch']}: {last['train_s']:.2f} s training ({last['time_s']:.2f} s "
                      f"with evaluation), {last['images_per_s']:,.0f} img/s, input wait "
                      f"{100 * last['data_wait_share']:.0f} %, {row['tflops']:.2f} TFLOP/s{share}", flush=True)
            rows.append(row)
            results.write(rows)
    done = {r["way"]: r for r in rows if r["rc"] == 0}
    if "default" in done and "plain" in done:
        ratio = done["default"]["epochs"][-1]["images_per_s"] / done["plain"]["epochs"][-1]["images_per_s"]
        done["default"]["speedup_over_plain"] = ratio
        results.write(rows)
        print(f"default / plain: {ratio:.2f}x the images/s")
    return rows


if __name__ == "__main__":
    main()
