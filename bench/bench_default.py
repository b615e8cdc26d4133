"""The embedded default run (`smec-fast train` with no options) under candidate presets, side by side.

Each candidate is the synthetic preset with some settings changed; each runs as the user's command does, in a
fresh process (`python -m smec_fast train --out DIR` plus the candidate's options), and is timed from process
start to exit, imports, face drawing and evaluation included. A row records the wall time, the final and
best balanced accuracy on the embedded test faces, L_con's mean in the first and last epoch (SMEC's
consistency term: it must stay visibly nonzero), the training images/s and the precision the run chose.

`--kinds` runs every candidate on this CPU as it is (`native`) and with oneDNN and ATen capped to AVX2
(`avx2`: ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2), which runs the kernels an AVX2-only CPU (AMD Zen
3) runs, in fp32 as `--amp auto` picks there, at this CPU's clock and cache: a stand-in for that kind, not a
measurement of it. `no-amx` (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16) keeps oneDNN off AMX on an Intel CPU with AMX,
whose bf16 kernels are right for narrower inputs than AMX's (smec_fast.precision): there the default run's 32-px
SMEC pieces train in bf16 instead of fp32. Rows are added to `--out` as they come, after the rows earlier runs left there (other
machines, other commits), so a run cut short keeps what it measured and nothing measured before is lost.

    python bench/bench_default.py                                  # every candidate, native and avx2
    python bench/bench_default.py --candidates current 56px-e7 --kinds avx2 --extra "--seed 1"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchenv import REPO, ResultsFile, git_sha, versions

from smec_fast.config import PRESETS
from smec_fast.precision import cpu_identity, describe_cpu

# name -> options on top of the synthetic preset. "current" is the preset as it is in this checkout.
CANDIDATES: dict[str, list[str]] = {
    "current": [],
    "64px-e8-nhwc": ["--image-size", "64", "--epochs", "8", "--channels-last", "on"],
    "64px-e8-nchw": ["--image-size", "64", "--epochs", "8", "--channels-last", "off"],
    "64px-e6-decay": ["--image-size", "64", "--epochs", "6", "--lr-decay", "0.7"],
    "48px-e8": ["--image-size", "48", "--epochs", "8"],
    "48px-e8-decay": ["--image-size", "48", "--epochs", "8", "--lr-decay", "0.75"],
    "48px-e6-decay": ["--image-size", "48", "--epochs", "6", "--lr-decay", "0.7"],
    "48px-n1500-e8-decay": ["--image-size", "48", "--epochs", "8", "--lr-decay", "0.75",
                            "--synthetic-train-size", "1500"],
    "48px-e8-b16": ["--image-size", "48", "--epochs", "8", "--batch-size", "16"],
    "48px-e6-b16": ["--image-size", "48", "--epochs", "6", "--batch-size", "16", "--con-warmup-epochs", "1.5"],
    "40px-e8-b16": ["--image-size", "40", "--epochs", "8", "--batch-size", "16"],
    "56px-e8": ["--image-size", "56", "--epochs", "8"],
    "56px-e7": ["--image-size", "56", "--epochs", "7", "--con-warmup-epochs", "1.75"],
}
KINDS = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
         "no-amx": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}}
CAPS = {"avx2": "capped to AVX2", "no-amx": "oneDNN kept off AMX"}


def run_candidate(name: str, kind: str, workdir: Path, extra: list[str]) -> dict:
    out = workdir / f"{name}-{kind}"
    command = [sys.executable, "-m", "smec_fast", "train", "--out", str(out), "--progress", "false",
               *CANDIDATES[name], *extra]
    env = {**os.environ, **KINDS[kind]}
    if KINDS[kind]:  # inductor's cache key leaves out the capability: keep the capped run's kernels apart
        env["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / f"inductor-{kind}")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} ({kind}) failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    return {"candidate": name, "kind": kind, "options": [*CANDIDATES[name], *extra], "wall_s": wall,
            "final_balanced_accuracy": metrics["final_balanced_accuracy"],
            "best_balanced_accuracy": metrics["best_balanced_accuracy"],
            "final_accuracy": metrics["final_accuracy"],
            "l_con_first_epoch": history[0]["train"].get("con"), "l_con_last_epoch": history[-1]["train"].get("con"),
            "images_per_s": metrics["throughput"]["images_per_s"], "eval_s": metrics["throughput"]["eval_s"],
            "precision": metrics["precision"], "config": {k: metrics["config"][k] for k in (
                "image_size", "epochs", "batch_size", "lr", "lr_decay", "synthetic_train_size",
                "synthetic_test_size", "con_warmup_epochs")},
            "cpu_kind": describe_cpu(cpu_identity()) if kind == "native" else
            f"{describe_cpu(cpu_identity())}, {CAPS[kind]} ({', '.join(f'{k}={v}' for k, v in KINDS[kind].items())})"}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=["native", "avx2"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "default_cpu.json")
    parser.add_argument("--extra", default="", help="options added to every candidate's command (quoted), e.g. "
                                                     "'--epochs 1' for a quick check that the script runs")
    args = parser.parse_args(argv)
    env = {**versions(), "git": git_sha(), "command": shlex.join([Path(sys.executable).name, *sys.argv]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "preset": PRESETS["synthetic"]}
    print(f"# {describe_cpu()} | torch {env['torch']} | git {env['git']} | preset {PRESETS['synthetic']}")
    results = ResultsFile(args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            for name in args.candidates:
                row = {**run_candidate(name, kind, Path(tmp), shlex.split(args.extra)), **env}
                rows.append(row)
                results.write(rows)
                print(f"{kind:6s} {name:22s} {row['wall_s']:7.1f} s  balanced {row['final_balanced_accuracy']:5.1f} % "
                      f"(best {row['best_balanced_accuracy']:5.1f})  acc {row['final_accuracy']:5.1f} %  L_con "
                      f"{row['l_con_first_epoch']:.4f} -> {row['l_con_last_epoch']:.4f}  "
                      f"{row['images_per_s']:6.1f} img/s  {row['precision']['amp']}"
                      f"{' NHWC' if row['precision']['channels_last'] else ' NCHW'}", flush=True)
    print()
    for kind in args.kinds:
        base = next((r for r in rows if r["kind"] == kind and r["candidate"] == args.candidates[0]), None)
        for row in rows:
            if row["kind"] == kind and base is not None and row is not base:
                row["time_ratio_to_first"] = row["wall_s"] / base["wall_s"]
                print(f"{kind:6s} {row['candidate']:22s} {row['time_ratio_to_first']:.2f}x the time of "
                      f"{base['candidate']}")
    results.write(rows)
    print(results.describe(rows))
    return rows


if __name__ == "__main__":
    main()
