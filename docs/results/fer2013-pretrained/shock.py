"""SMEC's start-up shock, measured: L_con, the classification loss and test accuracy over a run's first steps.

From the experiment's backbone (run.sh), SMEC trains on half B with 40 % symmetric noise, the paper's recipe
(Adam lr 1e-4, batch 64, lambda_con 3, no warm-up), for --steps steps; every --every steps it records the
mean of L_con and of CE + ELR over those steps and the test accuracy (eval mode) on a fixed subset of the
test split. The variants change one thing at a time:

    size    48, 96 (the experiment's), 128 px: layer4 maps of 2x2, 3x3 and 4x4 (the backbone is the 96 px one)
    head    "fresh" (--pretrained-head drop, as in the experiment) or "trained" (the backbone's own FER
            classifier kept, so the CAM weight is a trained one from the first step)
    bn      "pieces" (the pieces' forward updates batch-norm statistics, the default) or "originals"
            (--piece-bn-stats false)
    ramp    lambda_con ramped linearly from 0 over the first epoch (--con-warmup-epochs 1)
    head    a classifier-only first epoch: the backbone frozen in eval mode for epoch 1 (L_con then has nothing
            to train), everything trained from epoch 2 on, when the classifier is a trained one
    ce/elr  the same with plain CE or ELR (--method ce, elr): what SMEC's classification loss alone does

    python docs/results/fer2013-pretrained/shock.py --out docs/results/fer2013-pretrained/shock.json

Writes the rows as JSON and a plot (shock.png) beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from smec_fast.config import resolve_config
from smec_fast.data import build_data, make_loader
from smec_fast.atomic import atomic_write_json
from smec_fast.methods import build_method, narrowest_input_width
from smec_fast.model import FerResNet18, load_pretrained
from smec_fast.precision import autocast_context, resolve_precision
from smec_fast.metrics import evaluate
from smec_fast.trainer import TrainingObjective

VARIANTS = {  # name: (method, image size, head, piece_bn_stats, lambda_con ramp in epochs, classifier-only epochs)
    "smec-96-fresh-pieces": ("smec", 96, "drop", True, 0.0, 0),
    "smec-96-trained-pieces": ("smec", 96, "keep", True, 0.0, 0),
    "smec-96-fresh-originals": ("smec", 96, "drop", False, 0.0, 0),
    "smec-96-fresh-pieces-ramp1": ("smec", 96, "drop", True, 1.0, 0),
    "smec-96-fresh-pieces-head1": ("smec", 96, "drop", True, 0.0, 1),
    "smec-48-fresh-pieces": ("smec", 48, "drop", True, 0.0, 0),
    "smec-128-fresh-pieces": ("smec", 128, "drop", True, 0.0, 0),
    "ce-96-fresh": ("ce", 96, "drop", True, 0.0, 0),
    "elr-96-fresh": ("elr", 96, "drop", True, 0.0, 0),
}


def run_variant(name: str, args) -> dict:
    method_name, size, head, piece_bn, ramp, head_epochs = VARIANTS[name]
    cfg = resolve_config(cli_values={
        "dataset": "folder", "data": str(args.data), "method": method_name, "image_size": size,
        "noise_rate": 0.4, "max_train_samples": 4000, "val_fraction": 0.1, "max_test_samples": args.test_images,
        "batch_size": 64, "lr": 1e-4, "piece_bn_stats": piece_bn, "con_warmup_epochs": ramp,
        "pretrained": str(args.backbone), "pretrained_head": head, "num_workers": 2, "progress": False})
    device = torch.device("cpu")
    precision = resolve_precision(cfg.amp, cfg.channels_last, device, narrowest_input_width(cfg))
    data = build_data(cfg)
    torch.manual_seed(cfg.seed)
    model = FerResNet18(data.train.num_classes)
    load_pretrained(model, cfg.pretrained, head, data.class_names)
    method = build_method(cfg, data.train.labels, data.train.num_classes, data.noise.rate)
    model.to(memory_format=precision.memory_format)
    objective = TrainingObjective(model, method)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(method.parameters()), lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, fused=True)
    train_loader = make_loader("cached", data.train, size, cfg.batch_size, device, train=True, seed=cfg.seed)
    test_loader = make_loader("cached", data.test, size, 128, device, train=False)
    points = [{"step": 0, "test_accuracy": evaluate(model, test_loader, data.class_names, precision.amp)["accuracy"]}]
    sums: dict[str, float] = {}
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        train_loader.set_epoch(epoch)
        method.start_epoch(epoch, cfg.seed)
        head_only = epoch < head_epochs
        for p_name, parameter in model.named_parameters():
            parameter.requires_grad_(not head_only or p_name.startswith("fc."))
        for images, labels, index in train_loader:
            objective.train()
            if head_only:
                model.eval()  # the frozen backbone keeps its batch-norm statistics; the classifier is linear
            method.set_progress(step / len(train_loader))
            images = images.contiguous(memory_format=precision.memory_format)
            with autocast_context(device, precision.amp):
                loss, parts = objective(images, labels, index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.end_step(index)
            for key, value in {"loss": loss, **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            step += 1
            if step % args.every == 0:
                accuracy = evaluate(model, test_loader, data.class_names, precision.amp)["accuracy"]
                points.append({"step": step, "test_accuracy": accuracy,
                               **{f"mean_{k}": v / args.every for k, v in sums.items()}})
                print(f"{name:26s} step {step:4d}  " + "  ".join(f"{k} {v / args.every:.4f}" for k, v in sums.items())
                      + f"  test acc {accuracy:.2f}", flush=True)
                sums = {}
            if step >= args.steps:
                break
        epoch += 1
    return {"variant": name, "method": method_name, "image_size": size, "head": head, "piece_bn_stats": piece_bn,
            "con_warmup_epochs": ramp, "classifier_only_epochs": head_epochs,
            "lambda_con": method.lambda_con,
            "precision": precision.to_dict(), "steps_per_epoch": len(train_loader), "points": points,
            "seconds": time.perf_counter() - start}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        steps = [p["step"] for p in row["points"]]
        axes[0].plot(steps, [p["test_accuracy"] for p in row["points"]], marker="o", label=row["variant"])
        con = [(p["step"], p["mean_con"]) for p in row["points"] if "mean_con" in p]
        if con:
            axes[1].plot(*zip(*con), marker="o", label=row["variant"])
    axes[0].set(xlabel="training step", ylabel="test accuracy (%)", title="test accuracy")
    axes[1].set(xlabel="training step", ylabel="mean L_con over the last steps", title="L_con", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/fer2013-pretrained/data/halfB"))
    parser.add_argument("--backbone", type=Path, default=Path("/tmp/fer2013-pretrained/backbone.pt"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {row["variant"] for row in rows}
    for name in args.variants:
        if name in done:
            continue
        rows.append(run_variant(name, args))
        atomic_write_json(args.out, rows)  # variant by variant: an interrupted run keeps what it measured
        plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
