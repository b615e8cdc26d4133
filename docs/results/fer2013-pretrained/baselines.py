"""The baselines with their official recipes against the shared one, in the pretrained regime: one table, one plot.

    python3 docs/results/fer2013-pretrained/baselines.py docs/results/fer2013-pretrained

Reads `noise40/sweep.json` (ce, elr, eac and smec with the shared recipe) and `baselines/sweep.json` (eac, scn and
rul with `--recipe official`, scn and rul with the shared one), keeps the 40 % noise cells, and writes
`baselines.md` and `baselines.png` as ablations.py does. Rows not run yet are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ablations import NOTE, collect, plot, table

ROWS = (  # (sweep folder, cell label, row name, recipe)
    ("noise40", "smec", "SMEC", "shared (the paper's)"),
    ("noise40", "eac", "EAC", "shared"),
    ("baselines", "eac-official", "EAC", "official"),
    ("baselines", "scn", "SCN", "shared"),
    ("baselines", "scn-official", "SCN", "official"),
    ("baselines", "rul", "RUL", "shared"),
    ("baselines", "rul-official", "RUL", "official"),
    ("noise40", "elr", "ELR (CE + ELR)", "shared"),
    ("noise40", "ce", "CE", "shared"),
)


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).parent)
    rows = collect(root, spec=ROWS)
    if not rows:
        print(f"{root}: no sweep.json with 40 % noise cells yet", file=sys.stderr)
        return 1
    text = table(rows).replace("| variant | tests |", "| method | recipe |", 1)
    (root / "baselines.md").write_text(NOTE + text, encoding="utf-8")
    plot(rows, root / "baselines.png", "FER2013, pretrained regime, 40 % noise: baselines by recipe, each seed "
                                       "(dot) and their mean (bar)")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
