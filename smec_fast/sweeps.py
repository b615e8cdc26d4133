"""Grids of runs (methods x noise rates x seeds) and the paper's Table 1-style summaries.

A sweep runs its cells one after another on one device, each in its own folder
`OUT/<label>/noise<rate>/seed<seed>/`. A cell whose `metrics.json` exists is skipped and an interrupted
cell resumes from its checkpoint, so re-running the same command finishes an interrupted sweep. Results
are collected into `OUT/sweep.json`, `OUT/table.md`, `OUT/balanced_accuracy.png` (against noise rate) and
`OUT/curves.png` (test accuracy epoch by epoch).

Methods are given as variants: a method name, optionally followed by `:key=value` config overrides and
a `:label=NAME` for the tables, e.g. `smec:grid=2x2:label=split4` or `smec:cls_loss=ce:label=smec-ce`.
"""

from __future__ import annotations

import io
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from smec_fast.config import method_names, option_values, resolve_config
from smec_fast.errors import ConfigError
from smec_fast.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from smec_fast.provenance import source_revision

log = logging.getLogger(__name__)

# Per-cell figures kept in sweep.json (each cell's own metrics.json keeps its full history).
CELL_KEYS = ("best_accuracy", "best_epoch", "best_balanced_accuracy", "final_accuracy", "final_balanced_accuracy",
             "per_class_accuracy", "selected_accuracy", "selected_balanced_accuracy", "selected_epoch",
             "lambda_con", "noise", "epochs", "train_time_s", "label_audit")


@dataclass
class Variant:
    label: str
    method: str
    overrides: dict = field(default_factory=dict)


def parse_variants(spec: str, option: str = "--methods") -> list[Variant]:
    """'ce,smec:grid=2x2:label=split4' -> variants; labels must be unique. Errors name `option`, where the spec
    came from."""
    variants = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        method, *options = item.split(":")
        if method not in method_names():
            raise ConfigError(f"{option}: unknown method {method!r} (choose from {', '.join(method_names())})")
        raw, label = {}, method
        for setting in options:
            key, sep, value = setting.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise ConfigError(f"{option}: expected key=value after ':' in {item!r}, got {setting!r}")
            if key == "label":
                label = value
                continue
            if key in ("method", "noise_rate", "seed", "out"):
                raise ConfigError(f"{option}: {key} is set by the sweep itself, not per method ({item!r})")
            raw[key] = value
        overrides = option_values(raw, f"{option} {item!r}")
        if label == method and overrides:
            label = item.replace(":", "-").replace("=", "")
        variants.append(Variant(label, method, overrides))
    if not variants:
        raise ConfigError(f"{option}: no method given")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{option}: labels repeat ({', '.join(labels)}); give each variant a :label=NAME")
    return variants


def _parse_list(spec: str, option: str, kind, what: str) -> list:
    try:
        values = [kind(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be a comma-separated list of {what}, got {spec!r}") from None
    if not values:
        raise ConfigError(f"{option}: no value given")
    if len(set(values)) != len(values):
        raise ConfigError(f"{option}: values repeat ({spec})")
    return values


def parse_floats(spec: str, option: str) -> list[float]:
    return _parse_list(spec, option, float, "numbers")


def parse_ints(spec: str, option: str) -> list[int]:
    return _parse_list(spec, option, int, "integers")


def cell_dir(out: Path, label: str, noise_rate: float, seed: int) -> Path:
    return out / label / f"noise{round(noise_rate * 100):02d}" / f"seed{seed}"


def run_sweep(base: dict, variants: list[Variant], noise_rates: list[float], seeds: list[int], out: str | Path,
              command: str = "", reference: str | None = None, option: str = "--reference") -> dict:
    """Train every cell that has no metrics.json yet, then write the summaries. Returns sweep.json's content.

    Cells train seed by seed (each seed's noise rates, each rate's variants), so a sweep cut short leaves every
    variant on the same seeds; sweep.json and the tables list them variant by variant. table.md ends with the
    `reference` variant (a label; default the last variant, where a results table puts the proposed method)
    against each other one (paired_table); errors about it name `option`."""
    import json

    from smec_fast.trainer import train

    revision = source_revision()  # before the first cell: what this process imported
    out = Path(out)
    for key in ("method", "noise_rate", "seed", "out", "resume"):
        if key in base:
            raise ConfigError(f"--{key.replace('_', '-')} is set by the sweep for each cell; use --methods, "
                              f"--noise-rates, --seeds and --out")
    labels = [variant.label for variant in variants]
    reference = labels[-1] if reference is None else reference
    if reference not in labels:
        raise ConfigError(f"{option}: no variant is labelled {reference!r} (labels: {', '.join(labels)})")
    grid = [(variant, rate, seed) for variant in variants for rate in noise_rates for seed in seeds]
    configs = {}  # (label, rate, seed) -> the cell's config, all validated before the first cell trains
    for variant, rate, seed in grid:
        cell = {**variant.overrides, "method": variant.method, "noise_rate": rate, "seed": seed,
                "out": str(cell_dir(out, variant.label, rate, seed)), "resume": True}
        # the variant's options override the sweep's, as the command line overrides a config file
        configs[variant.label, rate, seed] = resolve_config(file_values=base, cli_values=cell)
    folders = [cfg.out for cfg in configs.values()]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"--noise-rates: rates that round to the same percentage would share a folder "
                          f"({', '.join(map(str, noise_rates))})")
    finished = {}  # (label, rate, seed) -> the cell's metrics
    training_order = [(variant, rate, seed) for seed in seeds for rate in noise_rates for variant in variants]
    for i, (variant, rate, seed) in enumerate(training_order, start=1):
        cfg = configs[variant.label, rate, seed]
        metrics_path = Path(cfg.out) / "metrics.json"
        if metrics_path.exists():
            log.info("[%d/%d] %s noise %.2f seed %d: done, skipped", i, len(configs), variant.label, rate, seed)
            finished[variant.label, rate, seed] = json.loads(metrics_path.read_text())
        else:
            log.info("[%d/%d] %s noise %.2f seed %d", i, len(configs), variant.label, rate, seed)
            finished[variant.label, rate, seed] = train(cfg)
    cells = []
    for variant, rate, seed in grid:
        cfg, metrics = configs[variant.label, rate, seed], finished[variant.label, rate, seed]
        cells.append({"label": variant.label, "method": variant.method, "overrides": variant.overrides,
                      "noise_rate": rate, "seed": seed, "out": cfg.out,
                      **{k: metrics[k] for k in CELL_KEYS if k in metrics},
                      "test_accuracy_by_epoch": [h["test"]["accuracy"] for h in metrics["history"]],
                      "git": metrics.get("environment", {}).get("git")})
        class_names = metrics["class_names"]
    result = {"command": command, "git": revision, "base": base, "class_names": class_names,
              "reference": reference, "cells": cells}
    atomic_write_json(out / "sweep.json", result)
    paired = paired_table(result, reference)
    atomic_write_text(out / "table.md", markdown_table(result) + (f"\n{paired}" if paired else ""))
    save_noise_plot(result, out / "balanced_accuracy.png")
    save_curve_plot(result, out / "curves.png")
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float | None], digits: int = 2) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    mean, std = mean_std(present)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(present) > 1 else f"{mean:.{digits}f}"


def audit_auroc(run: dict) -> float | None:
    """The noise AUROC of a run's label audit, from a sweep.json cell or a run's metrics.json; None without one."""
    return (run.get("label_audit") or {}).get("auroc")


def groups(result: dict) -> dict[tuple[str, float], list[dict]]:
    """Cells grouped by (label, noise rate), in sweep order."""
    grouped: dict[tuple[str, float], list[dict]] = {}
    for cell in result["cells"]:
        grouped.setdefault((cell["label"], cell["noise_rate"]), []).append(cell)
    return grouped


def markdown_table(result: dict) -> str:
    """Table 1 of the paper: balanced accuracy, best accuracy and per-class accuracy, mean ± std over seeds.

    Balanced and per-class accuracy are the final epoch's; "best accuracy" is the maximum test accuracy over
    epochs (the paper's metric); the final accuracy is given beside it, and with --val-fraction the test
    accuracy at the epoch of best validation accuracy ("Selected acc.", the honest figure). "Noise AUROC" is
    how well the final model's label audit tells the flipped training labels from the kept ones
    (smec_fast.audit; "-" without injected noise).
    """
    names = result["class_names"]
    seeds = sorted({c["seed"] for c in result["cells"]})
    lines = [f"Mean ± std over seeds {', '.join(map(str, seeds))}. Balanced and per-class accuracy: final epoch; "
             f"best accuracy: maximum test accuracy over epochs (the paper's metric); selected accuracy: test "
             f"accuracy at the epoch of best validation accuracy (with --val-fraction); noise AUROC: the label "
             f"audit's ranking of the flipped training labels (0.5 is chance).", "",
             "| Method | Noise (%) | Balanced acc. | Best acc. | Final acc. | Selected acc. | Noise AUROC | "
             + " | ".join(names) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(names)]
    rates = sorted({c["noise_rate"] for c in result["cells"]})
    grouped = groups(result)
    labels = list(dict.fromkeys(c["label"] for c in result["cells"]))
    for rate in rates:
        for label in labels:
            cells = grouped.get((label, rate))
            if not cells:
                continue
            per_class = [_fmt([c["per_class_accuracy"].get(n) for c in cells]) for n in names]
            found = _fmt([audit_auroc(c) for c in cells], digits=3)
            lines.append(f"| {label} | {100 * rate:g} | {_fmt([c['final_balanced_accuracy'] for c in cells])} | "
                         f"{_fmt([c['best_accuracy'] for c in cells])} | {_fmt([c['final_accuracy'] for c in cells])} | "
                         f"{_fmt([c.get('selected_accuracy') for c in cells])} | {found} | "
                         + " | ".join(per_class) + " |")
    return "\n".join(lines) + "\n"


def paired_difference(mine: list[float], theirs: list[float], digits: int = 2) -> str:
    """The mean of mine - theirs, seed by seed (the lists pair up by seed); on how many seeds mine is above; and,
    from two seeds on, the mean difference in seed spreads (the mean of the two rows' sample standard
    deviations). "+1.25 (2 of 3; +2.1 spreads)"; "-" where there is no pair."""
    if not mine:
        return "-"
    gap = statistics.fmean(a - b for a, b in zip(mine, theirs, strict=True))
    text = f"{gap:+.{digits}f} ({sum(a > b for a, b in zip(mine, theirs))} of {len(mine)}"
    if len(mine) > 1:
        spread = (statistics.stdev(mine) + statistics.stdev(theirs)) / 2
        text += f"; {gap / spread:+.1f} spreads" if spread > 0 else "; no spread"
    return text + ")"


def paired_by_seed(mine: dict[int, float | None], theirs: dict[int, float | None], digits: int = 2) -> str:
    """paired_difference of two rows given as seed -> figure, on the seeds where both have the figure."""
    pairs = [(a, b) for s in sorted(mine.keys() & theirs.keys())
             if (a := mine[s]) is not None and (b := theirs[s]) is not None]
    return paired_difference([a for a, _ in pairs], [b for _, b in pairs], digits)


PAIRED = (("final_accuracy", "Final acc.", 2), ("final_balanced_accuracy", "Balanced acc.", 2),
          ("selected_accuracy", "Selected acc.", 2), ("best_accuracy", "Best acc.", 2),
          ("auroc", "Noise AUROC", 3))  # (the cell's figure, column, digits)


def paired_table(result: dict, reference: str) -> str:
    """The variant labelled `reference` minus every other variant, seed by seed at each noise rate, as
    paired_by_seed gives it, on the seeds both finished: with few seeds, how many of them agree says more
    than two means with their spreads. "" where the sweep has no other variant to compare it with."""

    def figure(cell: dict, key: str) -> float | None:
        return audit_auroc(cell) if key == "auroc" else cell.get(key)

    labels = list(dict.fromkeys(c["label"] for c in result["cells"]))
    grouped = groups(result)
    lines = [f"{reference} minus each variant, seed by seed, then the mean; in brackets: on how many of the seeds "
             f"{reference} is above, and from two seeds on the mean difference in seed spreads (the mean of the "
             "two rows' sample standard deviations).", "",
             "| Against | Noise (%) | Seeds | " + " | ".join(title for _, title, _ in PAIRED) + " |",
             "|---|---|---|" + "---|" * len(PAIRED)]
    for rate in sorted({c["noise_rate"] for c in result["cells"]}):
        ours = {c["seed"]: c for c in grouped.get((reference, rate), [])}
        for label in labels:
            theirs = {c["seed"]: c for c in grouped.get((label, rate), [])}
            seeds = sorted(ours.keys() & theirs.keys())
            if label == reference or not seeds:
                continue
            columns = [paired_by_seed({s: figure(ours[s], key) for s in seeds},
                                      {s: figure(theirs[s], key) for s in seeds}, digits)
                       for key, _, digits in PAIRED]
            lines.append(f"| {label} | {100 * rate:g} | {', '.join(map(str, seeds))} | " + " | ".join(columns)
                         + " |")
    return "\n".join(lines) + "\n" if len(lines) > 4 else ""


def _save_figure(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def save_noise_plot(result: dict, path: str | Path) -> None:
    """Final balanced accuracy (and best accuracy) against noise rate, one line per method, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = groups(result)
    labels = list(dict.fromkeys(c["label"] for c in result["cells"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "final_balanced_accuracy", "balanced accuracy (final epoch)"),
                           (axes[1], "best_accuracy", "best accuracy (max over epochs)")):
        for label in labels:
            rates = sorted(r for (lab, r) in grouped if lab == label)
            stats = [mean_std([c[key] for c in grouped[(label, r)]]) for r in rates]
            ax.errorbar([100 * r for r in rates], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                        capsize=3, label=label)
        ax.set_xlabel("label noise (%)")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    _save_figure(fig, path)


def save_curve_plot(result: dict, path: str | Path) -> None:
    """Test accuracy after every epoch, one panel per noise rate and one line per method (mean over seeds,
    shaded +- std); a cross marks each seed's validation-selected epoch (with --val-fraction).

    Where memorisation sets in shows here and not in a final-epoch table: CE peaks early and falls, a
    noise-robust method keeps rising or holds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = groups(result)
    labels = list(dict.fromkeys(c["label"] for c in result["cells"]))
    rates = sorted({c["noise_rate"] for c in result["cells"]})
    fig, axes = plt.subplots(1, len(rates), figsize=(5.2 * len(rates), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, rate in zip(axes[0], rates):
        for i, label in enumerate(labels):
            cells = [c for c in grouped.get((label, rate), []) if c.get("test_accuracy_by_epoch")]
            if not cells:
                continue
            color = colors[i % len(colors)]
            epochs = min(len(c["test_accuracy_by_epoch"]) for c in cells)
            stats = [mean_std([c["test_accuracy_by_epoch"][e] for c in cells]) for e in range(epochs)]
            x = range(1, epochs + 1)
            mean = [m for m, _ in stats]
            seeds = f"{len(cells)} seed{'s' * (len(cells) > 1)}"
            ax.plot(x, mean, marker="o", markersize=3, color=color, label=f"{label} ({seeds})")
            ax.fill_between(x, [m - s for m, s in stats], [m + s for m, s in stats], color=color, alpha=0.2)
            for c in cells:
                chosen = c.get("selected_epoch")
                if chosen is not None and chosen <= len(c["test_accuracy_by_epoch"]):
                    ax.plot(chosen, c["test_accuracy_by_epoch"][chosen - 1], "x", color=color, markersize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"label noise {100 * rate:g} %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save_figure(fig, path)

