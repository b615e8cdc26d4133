"""Every method trained to its plateau, and SMEC at 192 px: the tables, curves and SCN relabelling counts.

    python3 docs/results/fer2013-pretrained/plateau.py table docs/results/fer2013-pretrained
    python3 docs/results/fer2013-pretrained/plateau.py extend docs/results/fer2013-pretrained --seeds 0,1

`table` reads the runs under `plateau/` (the eight variants of the 10-epoch comparison trained for 30 epochs),
`plateau45/` (those continued to 45 epochs) and `size192/` (SMEC, EAC and ELR at 192 px), straight from each
run's metrics.json (only the seeds that every variant of plateau/, or of size192/, has finished: the others
are named at the top and left out until then), and writes:
- `plateau.md`: for each variant, the figures of baselines.md (final, balanced, selected, best accuracy and the
  label audit's noise AUROC) at each epoch cut (10, 20, 30, and 45 where continued): the first epochs of a longer
  run are the run of that length, as nothing in a run depends on its epoch budget (constant or per-epoch learning
  rates, epoch-seeded data order); the AUROC exists only at a run's end. Then SMEC against each other variant
  after 10 and 30 epochs, metric by metric: the mean of the seed-by-seed differences, on how many seeds SMEC is
  above, and by how many seed spreads. Then each run's best epoch by test and by validation accuracy, with the
  CPU and bf16 kernels it ran on; then 192 px against 96 px at the same epoch count, with SMEC against EAC and
  ELR at each size; then each 30-epoch run's first 10 epochs against the committed 10-epoch run (noise40/,
  baselines/), which they repeat; then SCN's relabelling by epoch.
- `plateau.png`: test accuracy by epoch, mean and spread (min to max) over seeds, a line per variant, the 10-epoch
  cut marked; `size192.png` the same for the 192 px runs and their 96 px twins.

`extend` prints, one per line, the sweep variant and seed of every SMEC and EAC run in `plateau/` whose best
validation epoch falls in its last LAST epochs (3), and seeds its `plateau45/` folder with a copy of the run
(checkpoint included, where this machine still has it) so that the 45-epoch sweep resumes from epoch 30 instead of
training it again; run.sh feeds the lines to `smec-fast sweep`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from ablations import fmt as ablation_fmt

from smec_fast.sweeps import audit_auroc, paired_by_seed

RATE = "noise40"
# label -> (row name, recipe, the `smec-fast sweep --methods` variant that trains it)
VARIANTS = {
    "smec": ("SMEC", "shared (the paper's)", "smec"),
    "eac": ("EAC", "shared", "eac"),
    "eac-official": ("EAC", "official", "eac:recipe=official:label=eac-official"),
    "scn": ("SCN", "shared", "scn"),
    "scn-official": ("SCN", "official", "scn:recipe=official:label=scn-official"),
    "rul-official": ("RUL", "official", "rul:recipe=official:label=rul-official"),
    "elr": ("ELR (CE + ELR)", "shared", "elr"),
    "ce": ("CE", "shared", "ce"),
}
# Where each variant's 10-epoch runs are, which the first 10 epochs of its 30-epoch runs repeat.
TEN_EPOCHS = {"smec": "noise40", "eac": "noise40", "elr": "noise40", "ce": "noise40", "scn": "baselines",
              "eac-official": "baselines", "scn-official": "baselines", "rul-official": "baselines"}
EXTENDED = ("smec", "eac", "eac-official")  # continued to 45 epochs where they have not peaked by 30
CUTS = (10, 20, 30, 45)


def runs(folder: Path) -> dict[str, list[dict]]:
    """label -> the finished runs' metrics under folder/<label>/noise40/seed*/, sorted by seed."""
    found: dict[str, list[dict]] = {}
    for path in sorted(folder.glob(f"*/{RATE}/seed*/metrics.json")):
        found.setdefault(path.parents[2].name, []).append(json.loads(path.read_text()))
    return {label: sorted(cells, key=lambda m: m["config"]["seed"]) for label, cells in found.items()}


def at_cut(metrics: dict, cut: int) -> dict | None:
    """The figures of a run as if it had stopped after `cut` epochs (None when it trained fewer)."""
    history = metrics["history"][:cut]
    if len(history) < cut:
        return None
    last = history[-1]
    chosen = max(history, key=lambda h: h["val"]["accuracy"]) if "val" in last else None
    best = max(history, key=lambda h: h["test"]["accuracy"])
    return {
        "final": last["test"]["accuracy"],
        "balanced": last["test"]["balanced_accuracy"],
        "selected": chosen["test"]["accuracy"] if chosen else None,
        "best": best["test"]["accuracy"],
        "best_epoch": best["epoch"],
        "selected_epoch": chosen["epoch"] if chosen else None,
        "auroc": audits(metrics).get(cut),
    }


def audits(metrics: dict) -> dict[int, float]:
    """epoch count -> the label audit's noise AUROC of the run stopped there: its own last epoch's and, for a run
    continued from a shorter one (merged), the shorter run's."""
    own = audit_auroc(metrics)
    return {**metrics.get("earlier_audits", {}), **({len(metrics["history"]): own} if own is not None else {})}


def fmt(values: list[float | None], digits: int = 2) -> str:
    """mean ± std of the values there are (ablations.fmt), "-" where there are none."""
    present = [v for v in values if v is not None]
    return ablation_fmt(present, digits) if present else "-"


METRICS = (("final", "final acc.", 2), ("balanced", "balanced acc.", 2), ("selected", "selected acc.", 2),
           ("best", "best acc.", 2), ("auroc", "noise AUROC", 3))  # (at_cut's key, column, digits)


def cut_by_seed(cells: list[dict], cut: int) -> dict[int, dict]:
    """seed -> the run's figures at `cut` epochs (at_cut), in seed order; runs shorter than `cut` left out."""
    figures = {m["config"]["seed"]: at_cut(m, cut) for m in cells}
    return {seed: f for seed, f in figures.items() if f is not None}


def figures_table(rows: list[tuple[str, str, list[dict]]], cut: int) -> str:
    """One table like baselines.md for the runs cut at `cut` epochs; rows whose runs are shorter are left out."""
    head = ["method", "recipe", "seeds", *(title for _, title, _ in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, recipe, cells in rows:
        figures = cut_by_seed(cells, cut)
        if not figures:
            continue
        lines.append("| " + " | ".join([name, recipe, ", ".join(map(str, figures)),
                                        *(fmt([f[key] for f in figures.values()], digits)
                                          for key, _, digits in METRICS)]) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def against_table(reference: tuple[str, list[dict]], others: list[tuple[str, str, list[dict]]], cut: int) -> str:
    """One row per other method: the reference row's figures minus its, at `cut` epochs, metric by metric
    (paired_by_seed), on the seeds both ran to it (and, for each metric, have it); rows with no common seed
    at that cut are left out."""
    name, mine = reference
    ours = cut_by_seed(mine, cut)
    head = ["against", "recipe", "seeds", *(title for _, title, _ in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for other, recipe, theirs in others:
        them = cut_by_seed(theirs, cut)
        seeds = sorted(ours.keys() & them.keys())
        if not seeds:
            continue
        cells = [paired_by_seed({s: ours[s][key] for s in seeds}, {s: them[s][key] for s in seeds}, digits)
                 for key, _, digits in METRICS]
        lines.append(f"| {other} | {recipe} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    return (f"{name} minus each row, seed by seed, then the mean; in brackets: on how many of the seeds {name} is "
            "above, and from two seeds on the mean difference in seed spreads (the mean of the two rows' sample "
            "standard deviations over those seeds).\n\n" + "\n".join(lines) + "\n")


def best_epochs_table(rows: list[tuple[str, str, list[dict]]]) -> str:
    head = ["method", "recipe", "seed", "epochs", "best epoch by test (acc.)", "best epoch by validation (test acc.)",
            "CPU (bf16 kernels)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, recipe, cells in rows:
        for m in cells:
            f = at_cut(m, len(m["history"]))
            chosen = "-" if f["selected_epoch"] is None else f"{f['selected_epoch']} ({f['selected']:.2f})"
            lines.append(f"| {name} | {recipe} | {m['config']['seed']} | {len(m['history'])} | "
                         f"{f['best_epoch']} ({f['best']:.2f}) | {chosen} | {cpu_of(m, kernels=True)} |")
    return "\n".join(lines) + "\n"


def relabel_table(rows: list[tuple[str, str, list[dict]]]) -> str:
    """SCN's relabelling by epoch: labels changed, of them restored to the clean label and overwriting a clean
    one, and the share of wrong training labels after the epoch; mean over the seeds. Consecutive epochs with the
    same figures (those before the first relabelling) share a row."""
    head = ["method", "recipe", "epoch", "seeds", "changed", "restored", "overwrote", "wrong labels after (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, recipe, cells in rows:
        if not name.startswith("SCN"):
            continue
        epochs = max(len(m["history"]) for m in cells)
        found: list[tuple[int, str]] = []  # (epoch, the row's figures)
        for e in range(epochs):
            entries = [m["history"][e]["train"] for m in cells if len(m["history"]) > e]
            entries = [t for t in entries if "relabel_changed" in t]
            if not entries:
                continue
            mean = {k: statistics.fmean(t[k] for t in entries if k in t) if any(k in t for t in entries) else None
                    for k in ("relabel_changed", "relabel_restored", "relabel_overwrote", "labels_wrong")}
            if mean["labels_wrong"] is not None:
                mean["labels_wrong"] *= 100
            cells_text = ["-" if mean[k] is None else f"{mean[k]:.{2 if k == 'labels_wrong' else 1}f}"
                          for k in ("relabel_changed", "relabel_restored", "relabel_overwrote", "labels_wrong")]
            found.append((e + 1, f"{len(entries)} | " + " | ".join(cells_text)))
        start = 0
        for i, (epoch, text) in enumerate(found):  # runs of epochs with the same figures share a row
            if i + 1 < len(found) and found[i + 1][1] == text and found[i + 1][0] == epoch + 1:
                continue
            first = found[start][0]
            lines.append(f"| {name} | {recipe} | {first if first == epoch else f'{first}-{epoch}'} | {text} |")
            start = i + 1
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def cpu_of(metrics: dict, kernels: bool = False) -> str:
    """The CPU a run trained on, as its metrics.json names it (model and family numbers), and with `kernels` the
    bf16 instructions its precision choice named ("AMX and AVX512-BF16", "AVX512-BF16 (AMX unused: ...)")."""
    cpu = (metrics.get("environment") or {}).get("cpu")
    if not cpu:  # runs before environment.cpu: the precision choice's reason still names the instructions
        reason = (metrics.get("precision") or {}).get("reason")
        return f"not recorded ({reason})" if reason else "not recorded"
    name = cpu.split(" cores")[0].rsplit(", ", 1)[0]
    instructions = cpu.partition("native bf16 (")[2][:-1]
    return f"{name}, {instructions}" if kernels and instructions else name


def epoch_figures(h: dict) -> tuple:
    """An epoch's training loss, validation and test accuracy: what repeat_table compares."""
    return h["train"]["loss"], h.get("val", {}).get("accuracy"), h["test"]["accuracy"]


def repeat_table(root: Path, plateau: dict[str, list[dict]]) -> str:
    """Each 30-epoch run's first epochs against the 10-epoch run of its variant and seed (TEN_EPOCHS): the
    training loss and the validation and test accuracy of every epoch, which are equal to the last digit where
    both ran the same kernels in the same order."""
    head = ["method", "recipe", "seed", "epochs compared", "CPU of the longer run", "CPU of the 10-epoch run",
            "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, (name, recipe, _) in VARIANTS.items():
        for m in plateau.get(label, []):
            seed = m["config"]["seed"]
            path = root / TEN_EPOCHS[label] / label / RATE / f"seed{seed}" / "metrics.json"
            if not path.exists():
                continue
            short = json.loads(path.read_text())
            n = min(len(short["history"]), len(m["history"]))
            differ = [e for e in range(n) if epoch_figures(m["history"][e]) != epoch_figures(short["history"][e])]
            if differ:
                gap = max(abs(m["history"][e]["test"]["accuracy"] - short["history"][e]["test"]["accuracy"])
                          for e in range(n))
                result = f"differ from epoch {differ[0] + 1}; test accuracy up to {gap:.2f} points apart"
            else:
                result = "equal to the last digit"
            lines.append(f"| {name} | {recipe} | {seed} | {n} | {cpu_of(m)} | {cpu_of(short)} | {result} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def merged(base: dict[str, list[dict]], longer: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each label's runs, a continued run (plateau45/) standing in for its 30-epoch one (the same first epochs)
    and keeping that run's label audit as its figure at 30 epochs."""
    out = {}
    for label, cells in base.items():
        extra = {m["config"]["seed"]: m for m in longer.get(label, [])}
        out[label] = [{**extra[m["config"]["seed"]], "earlier_audits": audits(m)} if m["config"]["seed"] in extra
                      else m for m in cells]
    return out


def ordered(found: dict[str, list[dict]]) -> list[tuple[str, str, list[dict]]]:
    return [(VARIANTS[label][0], VARIANTS[label][1], found[label]) for label in VARIANTS if label in found]


def seeds_of(runs: list[dict]) -> str:
    """'seed 1' or 'seeds 0,1,2': the seeds of the runs a line averages, for its legend label."""
    return f"seed{'s' if len(runs) > 1 else ''} " + ",".join(str(m["config"]["seed"]) for m in runs)


def plot_curves(series: list[tuple[str, list[dict], bool]], path: Path, title: str,
                cut: int | None = 10) -> list[tuple[str, str, str]]:
    """Test accuracy by epoch, mean (line) and min-max over seeds (band), one line per (name, runs, dashed); a
    method's lines share a colour (a method is what its name has before the first comma), the dashed one (its
    authors' recipe, or the other image size) told apart by its style. Epochs that only some of the runs reach
    (a run continued to 45) are drawn dotted and named in the legend, so that a mean over fewer seeds does not
    pass for one over all. The legend stands right of the axes, clear of the lines. Returns each line's (legend
    label, line style, colour), the dotted continuations included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours: dict[str, str] = {}
    drawn = []
    for name, cells, dashed in series:
        epochs = max(len(m["history"]) for m in cells)
        shared = min(len(m["history"]) for m in cells)  # the epochs every run reaches
        xs, mean, low, high = [], [], [], []
        for e in range(epochs):
            values = [m["history"][e]["test"]["accuracy"] for m in cells if len(m["history"]) > e]
            xs.append(e + 1)
            mean.append(statistics.fmean(values))
            low.append(min(values))
            high.append(max(values))
        colour = colours.setdefault(name.split(",")[0], palette[len(colours) % len(palette)])
        line, = ax.plot(xs[:shared], mean[:shared], label=f"{name} ({seeds_of(cells)})",
                        lw=1.6, ls="--" if dashed else "-", color=colour)
        ax.fill_between(xs, low, high, color=colour, alpha=0.15, lw=0)
        drawn.append((line.get_label(), line.get_linestyle(), colour))
        if epochs > shared:  # from the last shared epoch on, so that the two pieces join
            longer = [m for m in cells if len(m["history"]) > shared]
            tail, = ax.plot(xs[shared - 1:], mean[shared - 1:], ls=":", lw=1.6, color=colour,
                            label=f"{name}, epochs {shared + 1}-{epochs} ({seeds_of(longer)})")
            drawn.append((tail.get_label(), tail.get_linestyle(), colour))
    if cut is not None:
        ax.axvline(cut, color="grey", ls="--", lw=1)
        ax.text(cut + 0.2, ax.get_ylim()[0] + 0.5, f"{cut}-epoch runs stop here", color="grey", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


NOTE = ("FER2013, pretrained regime, 40 % noise; mean ± sample std over the seeds named (one value where one seed "
        "ran). Each table cuts every run at an epoch count: final and balanced accuracy at that epoch; selected: "
        "test accuracy at the epoch of best validation accuracy up to it; best: maximum test accuracy up to it; "
        "noise AUROC: the label audit's ranking of the flipped training labels, computed once, at a run's last "
        "epoch.\n\n")


def same_seeds(found: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], list[str]]:
    """Each label's runs of the seeds that every label has finished, and the runs left out for now, in VARIANTS'
    order ("SMEC, shared (the paper's), seed 1"; the label itself where VARIANTS does not name it): a sitting
    that ends part-way through a seed does not put one method's mean over more seeds than another's."""
    if not found:
        return {}, []
    seeds = set.intersection(*({m["config"]["seed"] for m in cells} for cells in found.values()))
    kept = {label: [m for m in cells if m["config"]["seed"] in seeds] for label, cells in found.items()}
    rank = {label: i for i, label in enumerate(VARIANTS)}
    left = [f"{', '.join(VARIANTS[label][:2]) if label in VARIANTS else label}, seed {m['config']['seed']}"
            for label in sorted(found, key=lambda label: rank.get(label, len(rank)))
            for m in found[label] if m["config"]["seed"] not in seeds]
    return {label: cells for label, cells in kept.items() if cells}, left


def write_tables(root: Path) -> str:
    finished = runs(root / "plateau")
    if not finished:
        raise SystemExit(f"{root / 'plateau'}: no finished run yet")
    plateau, waiting = same_seeds(finished)
    if not plateau:
        raise SystemExit(f"{root / 'plateau'}: no seed is finished by every variant yet; finished: "
                         + "; ".join(waiting))
    longer = runs(root / "plateau45")
    size192, waiting192 = same_seeds(runs(root / "size192"))
    found = merged(plateau, longer)
    rows = ordered(found)
    parts = [NOTE]
    if waiting or waiting192:
        parts.append("Left out until every variant of their table has finished the seed: "
                     + "; ".join(waiting + [f"{run} at 192 px" for run in waiting192]) + ".\n\n")
    for cut in CUTS:
        text = figures_table(rows, cut)
        if text:
            parts.append(f"## After {cut} epochs\n\n{text}\n")
    if "smec" in found:
        others = [row for row in rows if row[0] != "SMEC"]
        for cut in (10, 30):
            text = against_table(("SMEC", found["smec"]), others, cut)
            if text:
                parts.append(f"## SMEC against each method after {cut} epochs\n\n{text}\n")
    large = [(f"{name}, 192 px", recipe, cells) for name, recipe, cells in ordered(size192)]
    parts.append("## Best epochs of each run\n\n" + best_epochs_table(rows + large) + "\n")
    if size192:
        seeds = {m["config"]["seed"] for cells in size192.values() for m in cells}  # the same for every label
        twins = {label: [m for m in plateau.get(label, []) if m["config"]["seed"] in seeds] for label in size192}
        sizes = (("192 px", size192), ("96 px", twins))
        pairs = [(f"{VARIANTS[label][0]}, {size}", VARIANTS[label][1], group[label])
                 for label in VARIANTS if label in size192 for size, group in sizes]
        epochs = min(len(m["history"]) for cells in size192.values() for m in cells)
        parts.append(f"## 192 px against 96 px, {epochs} epochs each\n\n"
                     "The 96 px rows are the 30-epoch runs cut at the 192 px runs' epoch count.\n\n"
                     + figures_table(pairs, epochs) + "\n")
        for size, group in sizes:
            others = [row for row in pairs if row[0].endswith(size) and not row[0].startswith("SMEC")]
            text = against_table((f"SMEC at {size}", group["smec"]), others, epochs) if group.get("smec") else ""
            if text:
                parts.append(f"## SMEC against EAC and ELR at {size}, {epochs} epochs\n\n{text}\n")
        plot_curves([(name, cells, name.endswith("96 px")) for name, _, cells in pairs if cells],
                    root / "size192.png",
                    "FER2013, pretrained regime, 40 % noise: 192 px against 96 px (mean, min-max over seeds)")
    repeat = repeat_table(root, plateau)
    if repeat:
        parts.append("## The first 10 epochs against the 10-epoch runs\n\n"
                     "Training loss, validation and test accuracy of every epoch the two runs share.\n\n" + repeat
                     + "\n")
    relabel = relabel_table(rows)
    if relabel:
        parts.append("## SCN's relabelling by epoch (mean over seeds)\n\n" + relabel)
    text = "".join(parts)
    (root / "plateau.md").write_text(text, encoding="utf-8")
    plot_curves([(f"{name}, {recipe}", cells, recipe == "official") for name, recipe, cells in rows],
                root / "plateau.png",
                "FER2013, pretrained regime, 40 % noise: test accuracy by epoch (mean, min-max over seeds)")
    return text


def extend(root: Path, seeds: set[int] | None, last: int) -> list[tuple[str, int]]:
    """The (sweep variant, seed) of every SMEC or EAC run in plateau/ whose best validation epoch is among its last
    `last`, each with its plateau45/ folder seeded from the finished run where that folder is still empty."""
    todo = []
    for label, cells in runs(root / "plateau").items():
        if label not in EXTENDED:
            continue
        for m in cells:
            seed = m["config"]["seed"]
            if seeds is not None and seed not in seeds:
                continue
            f = at_cut(m, len(m["history"]))
            if f["selected_epoch"] is None or f["selected_epoch"] <= len(m["history"]) - last:
                continue
            source = root / "plateau" / label / RATE / f"seed{seed}"
            target = root / "plateau45" / label / RATE / f"seed{seed}"
            if (source / "checkpoint.pt").exists() and not target.exists():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("metrics.json", "label_audit.csv"))
            todo.append((VARIANTS[label][2], seed))
    return todo


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("table", "extend"))
    parser.add_argument("root", type=Path, nargs="?", default=Path(__file__).parent)
    parser.add_argument("--seeds", help="extend: only these seeds (comma-separated)")
    parser.add_argument("--last", type=int, default=3, help="extend: how many last epochs count as not peaked")
    args = parser.parse_args(argv[1:])
    if args.action == "table":
        print(write_tables(args.root), end="")
        return 0
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    for variant, seed in extend(args.root, seeds, args.last):
        print(variant, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
