"""Split-and-merge consistency loss L_con (SMEC eq. 5; DESIGN.md steps 2-6).

The input image is cut into a rows x cols grid of pieces; every piece is flipped horizontally and sent
through the network. Each piece's CAM is flipped back, placed at its piece's position, and the merged map
is resized (bilinear, align_corners=False) to the original CAM's size when the two differ (a 224-wide
image gives 7 columns, two 112-wide halves give 2 x 4 = 8). L_con is the mean squared difference between
the original image's CAM and the merged CAM over (B, K, h, w).

Piece layout: `feat_pieces` is (P * B, C, h', w') with P = rows * cols, piece-major: piece p of sample b
sits at row p * B + b, and pieces are numbered row by row (p = r * cols + c).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cam import cam_reference


def merge_piece_maps(piece_maps: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Flip every piece's map back, place it at its grid position and resize the mosaic to `size`.

    Args:
        piece_maps: (P * B, K, h', w') maps of the flipped pieces, piece-major.
        grid: (rows, cols) of the split.
        size: (h, w) of the original image's map.

    Returns:
        (B, K, h, w) merged map.
    """
    rows, cols = grid
    pieces = rows * cols
    pb, k, hp, wp = piece_maps.shape
    if pb % pieces:
        raise ValueError(f"merge: {pb} piece maps is not a multiple of the {rows}x{cols} grid's {pieces} pieces")
    b = pb // pieces
    tiles = piece_maps.flip(-1).reshape(rows, cols, b, k, hp, wp)  # (R, Cg, B, K, h', w')
    merged = tiles.permute(2, 3, 0, 4, 1, 5).reshape(b, k, rows * hp, cols * wp)  # (B, K, R*h', Cg*w')
    if merged.shape[-2:] != tuple(size):
        merged = F.interpolate(merged, size=tuple(size), mode="bilinear", align_corners=False)
    return merged


def split_merge_consistency_reference(
    feat_org: torch.Tensor,
    feat_pieces: torch.Tensor,
    weight: torch.Tensor,
    grid: tuple[int, int] = (1, 2),
    detach_weight: bool = True,
) -> torch.Tensor:
    """L_con between the original CAM and the merged CAM of the flipped pieces.

    Args:
        feat_org: (B, C, h, w) features of the original images.
        feat_pieces: (P * B, C, h', w') features of the horizontally flipped pieces, piece-major.
        weight: (K, C) classifier weight.
        grid: (rows, cols) of the split; (1, 1) is EAC's whole-image flip consistency.
        detach_weight: keep L_con's gradient away from `weight` (as EAC's public code does).

    Returns:
        Scalar mean over (B, K, h, w) of (C_org - C_merged)^2.
    """
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"split_merge_consistency: grid must be positive, got {grid}")
    b, c, h, w = feat_org.shape
    if feat_pieces.dim() != 4 or feat_pieces.shape[0] != rows * cols * b or feat_pieces.shape[1] != c:
        raise ValueError(
            f"split_merge_consistency: feat_pieces must be ({rows * cols * b}, {c}, h', w') for "
            f"{rows}x{cols} pieces of feat_org {tuple(feat_org.shape)}, got {tuple(feat_pieces.shape)}")
    if detach_weight:
        weight = weight.detach()
    cam_org = cam_reference(feat_org, weight)  # (B, K, h, w)
    cam_merged = merge_piece_maps(cam_reference(feat_pieces, weight), grid, (h, w))  # (B, K, h, w)
    return (cam_org - cam_merged).pow(2).mean()


split_merge_consistency = split_merge_consistency_reference
