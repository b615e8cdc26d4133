"""SMEC's split grid (rows x columns of equal pieces) and its names in image terms, for the config, the log and
the tables alike.

The paper's pieces are C x W/2 x H (sec. III-A): the face cut along its width into a left and a right half, grid
1x2 (one row, two columns); its Table 3 compares them with the height split, grid 2x1. `--split left-right` and
`--split top-bottom` spell those two grids; `--grid ROWSxCOLS` gives any grid (1x1 is EAC's whole-image flip).
"""

from __future__ import annotations

from smec_fast.errors import ConfigError

SPLITS = {"left-right": (1, 2), "top-bottom": (2, 1)}


def grid_text(grid: tuple[int, int]) -> str:
    return "x".join(map(str, grid))


def parse_grid(value) -> tuple[int, int]:
    """'1x2', '1,2', [1, 2] or (1, 2) -> (1, 2)."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
    else:
        parts = list(value)
    try:
        rows, cols = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--grid must look like 1x2 (rows x cols), got {value!r}") from None
    return rows, cols


def parse_split(value) -> tuple[int, int]:
    """'left-right' -> (1, 2), 'top-bottom' -> (2, 1)."""
    if value not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}; got {value!r} (other grids are chosen "
                          f"with --grid ROWSxCOLS)")
    return SPLITS[value]


def split_name(grid: tuple[int, int]) -> str:
    """A grid in image terms: left-right (1x2), top-bottom (2x1), whole (1x1, EAC's flip), else ROWSxCOLS."""
    for name, split_grid in SPLITS.items():
        if split_grid == tuple(grid):
            return name
    return "whole" if tuple(grid) == (1, 1) else grid_text(grid)


def describe_split(grid: tuple[int, int]) -> str:
    """'top-bottom (grid 2x1, pieces H/2 x W)' for the log."""
    rows, cols = grid
    h = "H" if rows == 1 else f"H/{rows}"
    w = "W" if cols == 1 else f"W/{cols}"
    return f"{split_name(grid)} (grid {grid_text(grid)}, pieces {h} x {w})"
