"""The paper's ablations in the pretrained regime: one table and one plot from the sweeps run.sh wrote.

    python3 docs/results/fer2013-pretrained/ablations.py docs/results/fer2013-pretrained

Reads `noise40/sweep.json` (SMEC with left-right halves, the paper's split, and ELR for reference),
`split/sweep.json` (top-bottom halves) and `ablations/sweep.json` (2x2 and 4x4 pieces, SMEC with plain CE),
keeps the 40 % noise cells, and writes `ablations.md` (mean ± sample std over the seeds each row has, with
the seeds named) and `ablations.png` (each seed's final, balanced and validation-selected accuracy and label
audit AUROC by variant). Sweeps that are not there yet are left out.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from smec_fast.sweeps import audit_auroc

ROWS = (  # (sweep folder, cell label, row name, paper's claim it tests)
    ("noise40", "smec", "SMEC, left-right halves (1x2, the paper's)", "reference"),
    ("split", "smec-top-bottom", "SMEC, top-bottom halves (2x1)", "Table 3"),
    ("ablations", "smec-2x2", "SMEC, 2x2 pieces", "Table 2"),
    ("ablations", "smec-4x4", "SMEC, 4x4 pieces", "Table 2"),
    ("ablations", "smec-ce", "SMEC with CE instead of ELR", "Fig. 5"),
    ("noise40", "elr", "ELR alone (no L_con)", "reference"),
)
COLUMNS = (  # (name, how to read it from a cell)
    ("final acc.", lambda c: c["final_accuracy"]),
    ("balanced acc.", lambda c: c["final_balanced_accuracy"]),
    ("selected acc.", lambda c: c.get("selected_accuracy")),
    ("best acc.", lambda c: c["best_accuracy"]),
    ("noise AUROC", audit_auroc),
)


def collect(root: Path, rate: float = 0.4, spec=ROWS) -> list[tuple[str, str, list[dict]]]:
    """(row name, claim, cells sorted by seed) of each row of `spec` that has cells at `rate`."""
    rows = []
    for folder, label, name, claim in spec:
        path = root / folder / "sweep.json"
        if not path.exists():
            continue
        cells = [c for c in json.loads(path.read_text())["cells"]
                 if c["label"] == label and abs(c["noise_rate"] - rate) < 1e-9]
        if cells:
            rows.append((name, claim, sorted(cells, key=lambda c: c["seed"])))
    return rows


def fmt(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows) -> str:
    head = ["variant", "tests", "seeds", *(name for name, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, claim, cells in rows:
        out = [name, claim, ", ".join(str(c["seed"]) for c in cells)]
        for column, read in COLUMNS:
            values = [v for v in map(read, cells) if v is not None]
            out.append(fmt(values, 3 if column == "noise AUROC" else 2) if values else "-")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path, title: str = "FER2013, pretrained regime, 40 % noise: each seed (dot) and their "
                                             "mean (bar)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COLUMNS) - 1, figsize=(4 * (len(COLUMNS) - 1), 4.2), sharey=False)
    shown = [c for c in COLUMNS if c[0] != "best acc."]
    for ax, (column, read) in zip(axes, shown):
        for y, (name, _, cells) in enumerate(rows):
            values = [v for v in map(read, cells) if v is not None]
            ax.scatter(values, [y] * len(values), color="tab:blue", s=18, zorder=3)
            if values:
                ax.plot([statistics.fmean(values)] * 2, [y - 0.3, y + 0.3], color="black", lw=1.5)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([name for name, _, _ in rows] if ax is axes[0] else [])
        ax.invert_yaxis()
        ax.set_title(column)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


NOTE = ("40 % noise; mean ± sample std over the seeds named (one value where one seed ran). Final and "
        "balanced accuracy: last epoch; selected: test accuracy at the epoch of best validation accuracy; "
        "best: maximum test accuracy over epochs (the paper's metric); noise AUROC: the label audit's "
        "ranking of the flipped training labels.\n\n")


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).parent)
    rows = collect(root)
    if not rows:
        print(f"{root}: no sweep.json with 40 % noise cells yet", file=sys.stderr)
        return 1
    (root / "ablations.md").write_text(NOTE + table(rows), encoding="utf-8")
    plot(rows, root / "ablations.png")
    print(table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
