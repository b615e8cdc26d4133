"""How far training-step gradients drift from float64: eager and torch.compile, fp32 and bf16 autocast.

For each method, one training step's loss and parameter gradients are computed from the same weights and
batch in eager float64 (the reference) and in each way asked for: eager fp32, compiled fp32 (model + loss
under torch.compile, as `--compile on` trains), eager bf16 and compiled bf16 (under bf16 autocast, as
`--amp bf16` trains; on a CPU that is the path `--amp auto` takes on processors with native bf16). Each way
is scored by its worst parameter tensor, max |g - g64| / max |g64|, and by the median of that over all
tensors. Eager fp32 shows the rounding a correct fp32 step has and eager bf16 a correct bf16 step's; a
compiled figure far above its eager twin means the compiled step computes something else.

    python bench/check_compile.py                      # CPU
    python bench/check_compile.py --device cuda --out $OUT/compile_check_cuda.json

Writes the rows as JSON (method, way, amp, compiled, device, worst_rel_err, median_rel_err, worst_param,
loss_rel_err), after the rows earlier runs left in the file. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from benchenv import REPO, ResultsFile, device_name, git_sha

from smec_fast.config import resolve_config
from smec_fast.data import SplitLoader, synthetic_split
from smec_fast.methods import build_method, narrowest_input_width
from smec_fast.model import FerResNet18
from smec_fast.precision import autocast_context, resolve_precision
from smec_fast.trainer import TrainingObjective

WAYS = {"eager": ("off", False), "compiled": ("off", True), "eager-bf16": ("bf16", False),
        "compiled-bf16": ("bf16", True)}  # way: (autocast, compiled)


def gradients(objective, images, labels, index, compiled: bool, amp: str = "off"):
    forward = torch.compile(objective) if compiled else objective
    with autocast_context(images.device, amp):
        loss, _ = forward(images, labels, index)
    loss.backward()
    return loss.detach().double(), {n: p.grad.double() for n, p in objective.named_parameters() if p.grad is not None}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", default=["ce", "elr", "smec"])
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    out = args.out or REPO / "bench" / "results" / f"compile_check_{device.type}.json"
    results = ResultsFile(out)
    env = {"device_name": device_name(device), "torch": torch.__version__, "git": git_sha(),
           "image_size": args.image_size, "batch_size": args.batch_size}
    split = synthetic_split("train", 4 * args.batch_size, args.image_size, seed=0)
    # The data set's first batch in its own order, without flips: the same batch whatever the training streams.
    # The worst tensor's error depends on the batch (another batch of 16 at 40 px puts eager fp32's worst at
    # 0.15, a tensor whose gradient is small against its rounding, median 8e-3); the median moves far less.
    images, labels, index = next(iter(SplitLoader(split, args.image_size, args.batch_size, device, train=False)))
    rows = []
    print(f"# {env['device_name']} | torch {env['torch']} | git {env['git']}")
    print(f"{'method':6} {'way':13} {'worst':>9} {'median':>9} {'loss':>9}  worst tensor")
    for method in args.methods:
        torch.manual_seed(0)
        cfg = resolve_config(cli_values={"method": method, "noise_rate": 0.3, "image_size": args.image_size})
        objective = TrainingObjective(FerResNet18(7), build_method(cfg, split.labels, 7, 0.3)).to(device)
        loss64, ref = gradients(copy.deepcopy(objective).double(), images.double(), labels, index, False)
        for way in args.ways:
            amp, compiled = WAYS[way]
            resolve_precision(amp, "off", device, narrowest_input_width(cfg))  # refuses what training refuses
            loss, grads = gradients(copy.deepcopy(objective), images, labels, index, compiled, amp)
            errors = {n: ((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-30)).item() for n, g in ref.items()}
            worst = max(errors, key=errors.get)
            row = {"method": method, "way": way, "amp": amp, "compiled": compiled, "device": device.type,
                   "worst_rel_err": errors[worst],
                   "median_rel_err": statistics.median(errors.values()), "worst_param": worst,
                   "loss_rel_err": ((loss - loss64).abs() / loss64.abs()).item(), **env}
            rows.append(row)
            results.write(rows)  # row by row: a run cut short keeps what it measured
            print(f"{method:6} {way:13} {row['worst_rel_err']:9.1e} {row['median_rel_err']:9.1e} "
                  f"{row['loss_rel_err']:9.1e}  {worst}", flush=True)
    results.write(rows)
    print(results.describe(rows))
    return rows


if __name__ == "__main__":
    main()
