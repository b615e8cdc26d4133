"""The split side of SMEC's split-and-merge module (docs/design.md steps 3-4).

`split_and_flip` cuts a batch into a rows x cols grid of equal pieces and flips every piece horizontally,
stacking them piece-major so that one forward call handles all pieces. The merge side (flip back, place,
resize, compare) is `smec_fast.kernels.split_merge_consistency`.
"""

from __future__ import annotations

import torch

from smec_fast.errors import ConfigError


def check_grid(height: int, width: int, grid: tuple[int, int]) -> None:
    """Raise ConfigError unless a height x width image divides evenly into the grid."""
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ConfigError(f"--grid must have at least one row and one column, got {rows}x{cols}")
    if height % rows or width % cols:
        raise ConfigError(f"a {height}x{width} image does not divide into a {rows}x{cols} grid of equal pieces; "
                          f"choose an --image-size divisible by {rows} and {cols}")


def split_and_flip(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cut (B, C, H, W) images into a grid and flip every piece horizontally.

    Returns:
        (P * B, C, H / rows, W / cols) pieces with P = rows * cols, piece-major: piece p = r * cols + c of
        sample b at row p * B + b.
    """
    b, c, h, w = images.shape
    rows, cols = grid
    check_grid(h, w, grid)
    pieces = images.reshape(b, c, rows, h // rows, cols, w // cols)  # (B, C, R, H/R, Cg, W/Cg)
    pieces = pieces.permute(2, 4, 0, 1, 3, 5).reshape(rows * cols * b, c, h // rows, w // cols)
    return pieces.flip(-1)
