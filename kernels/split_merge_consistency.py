"""Split-and-merge consistency loss L_con (SMEC eq. 5; docs/design.md steps 2-6).

The input image is cut into a rows x cols grid of pieces; every piece is flipped horizontally and sent
through the network. Each piece's CAM is flipped back, placed at its piece's position, and the merged map
is resized (bilinear, align_corners=False) to the original CAM's size when the two differ (a 224-wide
image gives 7 columns, two 112-wide halves give 2 x 4 = 8). L_con is the mean squared difference between
the original image's CAM and the merged CAM over (B, K, h, w).

Piece layout: `feat_pieces` is (P * B, C, h', w') with P = rows * cols, piece-major: piece p of sample b
sits at row p * B + b, and pieces are numbered row by row (p = r * cols + c).

Fused kernels. Flip, placement and bilinear resize ("merge", M) are linear maps over space applied to every
channel alike, so they commute with the contraction over channels by W:

    D = C_org - M(C_pieces) = W . (F_org - M(F_pieces))

The forward kernel forms E = F_org - M(F_pieces) tile by tile (gathering the four bilinear sources of each
position straight from `feat_pieces`), contracts it once with W and keeps only D (B, K, h, w) in fp32: the
CAMs never exist in memory. With G = dL/dD = 2 g D / (B K h w):

    dL/dF_org    = W^T G
    dL/dF_pieces = -W^T M^T(G)        (M^T gathers from G, which has K channels, not C)
    dL/dW        = sum over (b, h, w) of G E^T   (recomputes E; only when the weight takes a gradient)

so with the weight detached the backward reads no features at all: it writes the two feature gradients
from D and W.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .backend import get_kernel_backend
from .cam import cam_reference

# Input dtypes the Triton kernels take; anything else (float64) runs the reference.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------


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


def _linear_resize_matrix(out_size: int, in_size: int, like: torch.Tensor) -> torch.Tensor:
    """(out_size, in_size) matrix of 1-D linear resizing (align_corners=False); bilinear is this per axis."""
    eye = torch.eye(in_size, dtype=like.dtype, device=like.device).unsqueeze(0)  # (1, in, in)
    return F.interpolate(eye, size=out_size, mode="linear", align_corners=False)[0].transpose(0, 1)


def merge_piece_maps_adjoint(merged_grad: torch.Tensor, grid: tuple[int, int],
                             piece_size: tuple[int, int]) -> torch.Tensor:
    """The adjoint (transpose) of `merge_piece_maps`: maps a gradient on the merged map back to the pieces.

    Args:
        merged_grad: (B, K, h, w) gradient with respect to the merged map.
        grid: (rows, cols) of the split.
        piece_size: (h', w') of each piece's map.

    Returns:
        (P * B, K, h', w') gradient with respect to the piece maps, piece-major.
    """
    rows, cols = grid
    hp, wp = piece_size
    b, k, h, w = merged_grad.shape
    hm, wm = rows * hp, cols * wp
    if (hm, wm) != (h, w):
        # The resize is separable, out = R_h X R_w^T, so its adjoint is R_h^T G R_w. (aten's
        # upsample_bilinear2d_backward would do, but has no meta kernel for symbolic sizes.)
        r_h = _linear_resize_matrix(h, hm, merged_grad)  # (h, R*h')
        r_w = _linear_resize_matrix(w, wm, merged_grad)  # (w, Cg*w')
        merged_grad = torch.einsum("my,bkmn,nx->bkyx", r_h, merged_grad, r_w)  # (B, K, R*h', Cg*w')
    tiles = merged_grad.reshape(b, k, rows, hp, cols, wp).permute(2, 4, 0, 1, 3, 5)  # (R, Cg, B, K, h', w')
    return tiles.reshape(rows * cols * b, k, hp, wp).flip(-1)


def _check_inputs(feat_org: torch.Tensor, feat_pieces: torch.Tensor, weight: torch.Tensor,
                  grid: tuple[int, int]) -> None:
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"split_merge_consistency: grid must be positive, got {grid}")
    b, c, h, w = feat_org.shape
    if feat_pieces.dim() != 4 or feat_pieces.shape[0] != rows * cols * b or feat_pieces.shape[1] != c:
        raise ValueError(
            f"split_merge_consistency: feat_pieces must be ({rows * cols * b}, {c}, h', w') for "
            f"{rows}x{cols} pieces of feat_org {tuple(feat_org.shape)}, got {tuple(feat_pieces.shape)}")


def _consistency_difference_reference(feat_org: torch.Tensor, feat_pieces: torch.Tensor, weight: torch.Tensor,
                                      grid: tuple[int, int]) -> torch.Tensor:
    """D = C_org - merge(C_pieces), (B, K, h, w), computed literally: both CAMs, then the merge."""
    h, w = feat_org.shape[-2:]
    cam_org = cam_reference(feat_org, weight)  # (B, K, h, w)
    cam_merged = merge_piece_maps(cam_reference(feat_pieces, weight), grid, (h, w))  # (B, K, h, w)
    return cam_org - cam_merged


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
    _check_inputs(feat_org, feat_pieces, weight, grid)
    if detach_weight:
        weight = weight.detach()
    return _consistency_difference_reference(feat_org, feat_pieces, weight, grid).pow(2).mean()


def _split_merge_consistency_backward_reference(grad_loss, diff, feat_org, feat_pieces, weight, rows, cols,
                                                weight_grad):
    """Gradients of mean(D^2) in plain PyTorch, from the saved D; the CPU half of the backward op."""
    g = diff * (grad_loss.to(diff.dtype) * (2.0 / diff.numel()))  # (B, K, h, w)
    wt = weight.to(diff.dtype)  # (K, C)
    grad_org = torch.einsum("bkhw,kc->bchw", g, wt).to(feat_org.dtype)  # (B, C, h, w)
    g_pieces = merge_piece_maps_adjoint(g, (rows, cols), tuple(feat_pieces.shape[-2:]))  # (P*B, K, h', w')
    grad_pieces = torch.einsum("pkhw,kc->pchw", g_pieces, -wt).to(feat_pieces.dtype)  # (P*B, C, h', w')
    if weight_grad:
        h, w = feat_org.shape[-2:]
        e = feat_org.to(diff.dtype) - merge_piece_maps(feat_pieces.to(diff.dtype), (rows, cols), (h, w))
        grad_weight = torch.einsum("bkhw,bchw->kc", g, e).to(weight.dtype)  # (K, C)
    else:
        grad_weight = weight.new_zeros(0)
    return grad_org, grad_pieces, grad_weight


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _bilinear_source(dst, scale, in_size):
    # Source rows (or columns) of output index `dst` exactly as F.interpolate(mode="bilinear",
    # align_corners=False) computes them: src = scale * (dst + 0.5) - 0.5 with negative src clamped to 0,
    # i0 = floor(src), i1 = i0 + 1 except at the last index, weight of i1 = src - i0.
    src = scale * (dst.to(tl.float32) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    i0 = src.to(tl.int32)  # src >= 0, so truncation is floor
    lam = src - i0.to(tl.float32)
    i1 = tl.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lam


@triton.jit
def _bilinear_adjoint_weight(dst, src_index, scale, in_size, out_size):
    # Weight with which output index `dst` reads input index `src_index` (0 where it does not, or where
    # `dst` is out of range): the same arithmetic as the forward, so the adjoint is exact.
    i0, i1, lam = _bilinear_source(dst, scale, in_size)
    wgt = tl.where(i0 == src_index, 1.0 - lam, 0.0) + tl.where(i1 == src_index, lam, 0.0)
    return tl.where((dst >= 0) & (dst < out_size), wgt, 0.0)


@triton.jit
def _mosaic_offset(y, x, b, B, HP, WP, COLS, stride_pb, stride_ph, stride_pw):
    # Offset in feat_pieces (channel term excluded) of mosaic position (y, x) of sample b. The mosaic holds
    # each piece's map flipped back, so column x of tile (r, c) is column WP - 1 - (x - c * WP) of piece
    # p = r * COLS + c, which sits at row p * B + b.
    r = y // HP
    c = x // WP
    i = y - r * HP
    j = WP - 1 - (x - c * WP)
    row = (r * COLS + c) * B + b
    return row.to(tl.int64) * stride_pb + i * stride_ph + j * stride_pw


@triton.jit
def _merge_sources(s, s_mask, b, B, W, HP, WP, COLS, HM, WM, stride_pb, stride_ph, stride_pw, scale_h, scale_w,
                   RESIZE: tl.constexpr):
    # For original positions s (flattened m * W + n): the feat_pieces offsets of their (up to) four bilinear
    # sources in the mosaic and the fractional weights. Without a resize, one source with weight 1.
    m = tl.where(s_mask, s // W, 0)
    n = tl.where(s_mask, s % W, 0)
    if RESIZE:
        y0, y1, ly = _bilinear_source(m, scale_h, HM)
        x0, x1, lx = _bilinear_source(n, scale_w, WM)
    else:
        y0, y1, ly = m, m, tl.zeros(m.shape, dtype=tl.float32)
        x0, x1, lx = n, n, tl.zeros(n.shape, dtype=tl.float32)
    off00 = _mosaic_offset(y0, x0, b, B, HP, WP, COLS, stride_pb, stride_ph, stride_pw)
    off01 = _mosaic_offset(y0, x1, b, B, HP, WP, COLS, stride_pb, stride_ph, stride_pw)
    off10 = _mosaic_offset(y1, x0, b, B, HP, WP, COLS, stride_pb, stride_ph, stride_pw)
    off11 = _mosaic_offset(y1, x1, b, B, HP, WP, COLS, stride_pb, stride_ph, stride_pw)
    return m, n, off00, off01, off10, off11, ly, lx


@triton.jit
def _difference_tile(fo_ptr, fp_ptr, b, c, mask, m, n, off00, off01, off10, off11, ly, lx,
                     stride_ob, stride_oc, stride_oh, stride_ow, stride_pc, RESIZE: tl.constexpr):
    # E = F_org - merge(F_pieces) for channels c (BLOCK_C,) and positions (BLOCK_HW,): loads in the inputs'
    # dtype, arithmetic in fp32, bilinear blend in F.interpolate's order (rows of columns).
    org = fo_ptr + b.to(tl.int64) * stride_ob + c[:, None].to(tl.int64) * stride_oc \
        + (m * stride_oh + n * stride_ow)[None, :]
    e = tl.load(org, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_C, BLOCK_HW)
    pc = fp_ptr + c[:, None].to(tl.int64) * stride_pc
    v00 = tl.load(pc + off00[None, :], mask=mask, other=0.0).to(tl.float32)
    if RESIZE:
        v01 = tl.load(pc + off01[None, :], mask=mask, other=0.0).to(tl.float32)
        v10 = tl.load(pc + off10[None, :], mask=mask, other=0.0).to(tl.float32)
        v11 = tl.load(pc + off11[None, :], mask=mask, other=0.0).to(tl.float32)
        wy = ly[None, :]
        wx = lx[None, :]
        top = (1.0 - wx) * v00 + wx * v01
        bottom = (1.0 - wx) * v10 + wx * v11
        e = e - ((1.0 - wy) * top + wy * bottom)
    else:
        e = e - v00
    return e


@triton.jit
def _split_merge_consistency_fwd_kernel(
    fo_ptr,  # (B, C, H, W) features of the original images, any strides, fp32/fp16/bf16
    fp_ptr,  # (P * B, C, HP, WP) features of the flipped pieces, piece-major, any strides
    w_ptr,  # (K, C) classifier weight, any strides
    d_ptr,  # (B, K, H * W) fp32 out: D = W . (F_org - merge(F_pieces)), saved for the backward
    sq_ptr,  # (B * cdiv(H * W, BLOCK_HW),) fp32 out: each program's sum of D^2
    B,  # batch size
    C,  # channels
    K,  # classes
    H,  # original map height
    W,  # original map width
    HP,  # piece map height
    WP,  # piece map width
    COLS,  # grid columns
    HM,  # mosaic height = rows * HP
    WM,  # mosaic width = COLS * WP
    stride_ob, stride_oc, stride_oh, stride_ow,  # strides of feat_org
    stride_pb, stride_pc, stride_ph, stride_pw,  # strides of feat_pieces
    stride_wk, stride_wc,  # strides of weight
    scale_h,  # HM / H as fp32, the resize's source step along height
    scale_w,  # WM / W as fp32, along width
    RESIZE: tl.constexpr,  # mosaic size differs from (H, W): blend four sources instead of copying one
    BLOCK_K: tl.constexpr,  # classes per tile (>= K, >= 16 for tl.dot)
    BLOCK_C: tl.constexpr,  # channels per step of the contraction loop
    BLOCK_HW: tl.constexpr,  # original positions per program
):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    s = pid_s * BLOCK_HW + tl.arange(0, BLOCK_HW)
    s_mask = s < H * W
    m, n, off00, off01, off10, off11, ly, lx = _merge_sources(
        s, s_mask, pid_b, B, W, HP, WP, COLS, HM, WM, stride_pb, stride_ph, stride_pw, scale_h, scale_w, RESIZE)
    k = tl.arange(0, BLOCK_K)
    k_mask = k < K
    acc = tl.zeros((BLOCK_K, BLOCK_HW), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_mask = c < C
        e = _difference_tile(fo_ptr, fp_ptr, pid_b, c, c_mask[:, None] & s_mask[None, :], m, n,
                             off00, off01, off10, off11, ly, lx,
                             stride_ob, stride_oc, stride_oh, stride_ow, stride_pc, RESIZE)  # (BLOCK_C, BLOCK_HW)
        wt = tl.load(w_ptr + k[:, None] * stride_wk + c[None, :] * stride_wc,
                     mask=k_mask[:, None] & c_mask[None, :], other=0.0).to(tl.float32)  # (BLOCK_K, BLOCK_C)
        # "ieee": fp32 FMA, not TF32, whose 10-bit mantissa would cost three decimal digits of D.
        acc += tl.dot(wt, e, input_precision="ieee")
    d = d_ptr + pid_b.to(tl.int64) * K * H * W + k[:, None] * (H * W) + s[None, :]
    tl.store(d, acc, mask=k_mask[:, None] & s_mask[None, :])
    tl.store(sq_ptr + pid_b * tl.num_programs(1) + pid_s, tl.sum(tl.sum(acc * acc, axis=1), axis=0))


@triton.jit
def _split_merge_consistency_loss_kernel(
    sq_ptr,  # (n_partials,) fp32 partial sums of D^2 from the forward kernel
    loss_ptr,  # () out: their sum over `count`, in the loss dtype
    n_partials,  # number of partial sums
    count,  # B * K * H * W, the number of terms of the mean
    BLOCK: tl.constexpr,  # partials summed per step
):
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i0 in range(0, n_partials, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        acc += tl.load(sq_ptr + i, mask=i < n_partials, other=0.0)
    total = tl.sum(acc, axis=0) / count  # `count` may arrive as a constexpr (Triton specialises 1): no .to()
    tl.store(loss_ptr, total.to(loss_ptr.dtype.element_ty))


@triton.jit
def _original_row_grads(b, c, c_mask, k, k_mask, wt, g, d_ptr, fo_ptr, fp_ptr, go_ptr, gw_ptr,
                        B, C, K, H, W, HP, WP, COLS, HM, WM,
                        stride_ob, stride_oc, stride_oh, stride_ow, stride_pb, stride_pc, stride_ph, stride_pw,
                        stride_gob, stride_goc, stride_goh, stride_gow, scale_h, scale_w,
                        RESIZE: tl.constexpr, WEIGHT_GRAD: tl.constexpr, BLOCK_HW: tl.constexpr):
    # dL/dF_org[b, c] = (g W)^T G[b] for channels c; with WEIGHT_GRAD also sample b's share of dL/dW,
    # G[b] E[b]^T, recomputing E from the features. `wt` is (BLOCK_C, BLOCK_K) = g W^T, g including the
    # mean's 2 / (B K H W).
    d_row = d_ptr + b.to(tl.int64) * K * H * W
    gw = tl.zeros((k.shape[0], c.shape[0]), dtype=tl.float32)  # (BLOCK_K, BLOCK_C)
    for s0 in range(0, H * W, BLOCK_HW):
        s = s0 + tl.arange(0, BLOCK_HW)
        s_mask = s < H * W
        d = tl.load(d_row + k[:, None] * (H * W) + s[None, :],
                    mask=k_mask[:, None] & s_mask[None, :], other=0.0)  # (BLOCK_K, BLOCK_HW)
        go = tl.dot(wt, d, input_precision="ieee")  # (BLOCK_C, BLOCK_HW)
        m = s // W
        n = s % W
        out = go_ptr + b.to(tl.int64) * stride_gob + c[:, None].to(tl.int64) * stride_goc \
            + (m * stride_goh + n * stride_gow)[None, :]
        tl.store(out, go.to(go_ptr.dtype.element_ty), mask=c_mask[:, None] & s_mask[None, :])
        if WEIGHT_GRAD:
            m, n, off00, off01, off10, off11, ly, lx = _merge_sources(
                s, s_mask, b, B, W, HP, WP, COLS, HM, WM, stride_pb, stride_ph, stride_pw, scale_h, scale_w, RESIZE)
            e = _difference_tile(fo_ptr, fp_ptr, b, c, c_mask[:, None] & s_mask[None, :], m, n,
                                 off00, off01, off10, off11, ly, lx,
                                 stride_ob, stride_oc, stride_oh, stride_ow, stride_pc, RESIZE)
            gw += tl.dot(d, tl.trans(e), input_precision="ieee")  # (BLOCK_K, BLOCK_C)
    if WEIGHT_GRAD:
        # `wt` carries g on the W side; the weight gradient takes it here instead.
        tl.store(gw_ptr + b.to(tl.int64) * K * C + k[:, None] * C + c[None, :], gw * g,
                 mask=k_mask[:, None] & c_mask[None, :])


@triton.jit
def _piece_row_grads(pb, c, c_mask, k, k_mask, wt, d_ptr, gp_ptr, B, K, H, W, HP, WP, COLS, HM, WM,
                     stride_gpb, stride_gpc, stride_gph, stride_gpw, scale_h, scale_w,
                     RESIZE: tl.constexpr, TAPS_H: tl.constexpr, TAPS_W: tl.constexpr, BLOCK_Q: tl.constexpr):
    # dL/dF_pieces[pb, c] = -(g W)^T M^T(G)[pb] for channels c: M^T gathers G (K channels) from the
    # original positions that read each piece position, then one contraction with W^T.
    p = pb // B
    b = pb - p * B
    r = p // COLS
    col = p - r * COLS
    d_row = d_ptr + b.to(tl.int64) * K * H * W
    for q0 in range(0, HP * WP, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        q_mask = q < HP * WP
        i = q // WP
        j = q % WP
        y = r * HP + i  # mosaic row of piece position (i, j)
        x = col * WP + (WP - 1 - j)  # mosaic column: the piece is flipped back
        if RESIZE:
            # Each mosaic position collects from the few output positions whose bilinear sources include
            # it. Candidates start at the first output index whose source can reach it
            # (floor((y - 0.5) / scale - 0.5), clamped at 0); TAPS_* of them cover the window.
            m_lo = tl.maximum((y.to(tl.float32) - 0.5) / scale_h - 0.5, 0.0).to(tl.int32)
            n_lo = tl.maximum((x.to(tl.float32) - 0.5) / scale_w - 0.5, 0.0).to(tl.int32)
            gq = tl.zeros((k.shape[0], BLOCK_Q), dtype=tl.float32)
            for u in tl.static_range(TAPS_H):
                mt = m_lo + u
                wy = _bilinear_adjoint_weight(mt, y, scale_h, HM, H)
                for v in tl.static_range(TAPS_W):
                    nt = n_lo + v
                    wgt = wy * _bilinear_adjoint_weight(nt, x, scale_w, WM, W)
                    take = q_mask & (wgt != 0.0)
                    dv = tl.load(d_row + k[:, None] * (H * W) + (mt * W + nt)[None, :],
                                 mask=k_mask[:, None] & take[None, :], other=0.0)
                    gq += wgt[None, :] * dv
        else:
            gq = tl.load(d_row + k[:, None] * (H * W) + (y * W + x)[None, :],
                         mask=k_mask[:, None] & q_mask[None, :], other=0.0)  # (BLOCK_K, BLOCK_Q)
        gp = -tl.dot(wt, gq, input_precision="ieee")  # (BLOCK_C, BLOCK_Q)
        out = gp_ptr + pb.to(tl.int64) * stride_gpb + c[:, None].to(tl.int64) * stride_gpc \
            + (i * stride_gph + j * stride_gpw)[None, :]
        tl.store(out, gp.to(gp_ptr.dtype.element_ty), mask=c_mask[:, None] & q_mask[None, :])


@triton.jit
def _split_merge_consistency_bwd_kernel(
    g_ptr,  # () upstream gradient of the loss
    d_ptr,  # (B, K, H * W) fp32 D saved by the forward
    w_ptr,  # (K, C) classifier weight
    fo_ptr,  # (B, C, H, W) features of the original images (read only when WEIGHT_GRAD)
    fp_ptr,  # (P * B, C, HP, WP) features of the pieces (read only when WEIGHT_GRAD)
    go_ptr,  # (B, C, H, W) out: gradient for feat_org, strides stride_go*
    gp_ptr,  # (P * B, C, HP, WP) out: gradient for feat_pieces, strides stride_gp*
    gw_ptr,  # (B, K, C) fp32 out: per-sample weight gradients, summed over B by the host (WEIGHT_GRAD)
    B,  # batch size
    C,  # channels
    K,  # classes
    H,  # original map height
    W,  # original map width
    HP,  # piece map height
    WP,  # piece map width
    COLS,  # grid columns
    HM,  # mosaic height
    WM,  # mosaic width
    stride_ob, stride_oc, stride_oh, stride_ow,  # strides of feat_org
    stride_pb, stride_pc, stride_ph, stride_pw,  # strides of feat_pieces
    stride_gob, stride_goc, stride_goh, stride_gow,  # strides of the feat_org gradient
    stride_gpb, stride_gpc, stride_gph, stride_gpw,  # strides of the feat_pieces gradient
    stride_wk, stride_wc,  # strides of weight
    scale_h,  # HM / H as fp32
    scale_w,  # WM / W as fp32
    RESIZE: tl.constexpr,  # mosaic size differs from (H, W)
    WEIGHT_GRAD: tl.constexpr,  # also write the weight gradient (recomputes E from the features)
    TAPS_H: tl.constexpr,  # candidate output rows per mosaic row in the adjoint resize
    TAPS_W: tl.constexpr,  # candidate output columns per mosaic column
    BLOCK_K: tl.constexpr,  # classes per tile (>= K, >= 16)
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_HW: tl.constexpr,  # original positions per step
    BLOCK_Q: tl.constexpr,  # piece positions per step
):
    # Programs (row, channel block): rows 0..B-1 write dL/dF_org of sample `row`, rows B.. write
    # dL/dF_pieces of piece row `row - B`; one launch for both. The two branches live in helpers so that
    # no variable is defined in both (compiled Triton requires such variables to agree in type and shape).
    row = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    k = tl.arange(0, BLOCK_K)
    k_mask = k < K
    # d mean(D^2) / dD = 2 D / (B K H W); computed here from the sizes, so that no float derived from a
    # (possibly symbolic, under torch.compile) batch size has to be passed in.
    g = tl.load(g_ptr).to(tl.float32) * (2.0 / (B * K * H * W))
    wt = tl.load(w_ptr + c[:, None] * stride_wc + k[None, :] * stride_wk,
                 mask=c_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32) * g  # (BLOCK_C, BLOCK_K)
    if row < B:
        _original_row_grads(row, c, c_mask, k, k_mask, wt, g, d_ptr, fo_ptr, fp_ptr, go_ptr, gw_ptr,
                            B, C, K, H, W, HP, WP, COLS, HM, WM,
                            stride_ob, stride_oc, stride_oh, stride_ow, stride_pb, stride_pc, stride_ph, stride_pw,
                            stride_gob, stride_goc, stride_goh, stride_gow, scale_h, scale_w,
                            RESIZE, WEIGHT_GRAD, BLOCK_HW)
    else:
        _piece_row_grads(row - B, c, c_mask, k, k_mask, wt, d_ptr, gp_ptr, B, K, H, W, HP, WP, COLS, HM, WM,
                         stride_gpb, stride_gpc, stride_gph, stride_gpw, scale_h, scale_w,
                         RESIZE, TAPS_H, TAPS_W, BLOCK_Q)


# ----------------------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------------------


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer every element of which a kernel writes (the tests hand out NaN-filled ones instead)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    """Like `_empty`, with the layout (e.g. channels_last) of `t`."""
    return torch.empty_like(t)


def _loss_dtype(feat_org: torch.Tensor, feat_pieces: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    # The reference's result dtype: C_org in promote(feat_org, W), C_merged in promote(feat_pieces, W).
    return torch.promote_types(torch.promote_types(feat_org.dtype, weight.dtype),
                               torch.promote_types(feat_pieces.dtype, weight.dtype))


def _block_k(k: int) -> int:
    return max(16, triton.next_power_of_2(k))


def _block_hw(b: int, hw: int) -> int:
    # Up to 64 positions per program; 224-size inputs have 7 x 7 = 49, one block per sample. Small batches
    # take narrower blocks so that the grid still has a few hundred programs to spread over the SMs.
    block = min(64, max(16, triton.next_power_of_2(hw)))
    while block > 16 and b * triton.cdiv(hw, block) < 512:
        block //= 2
    return block


def _resize_scale(mosaic_size: int, size: int) -> float:
    # F.interpolate's source step, input size / output size. Spatial sizes are fixed by the image size; int()
    # makes them concrete if torch.compile traced them as symbols (the step and the tap count are constants
    # of the kernel).
    return int(mosaic_size) / int(size)


def _resize_taps(scale: float) -> int:
    # Output indices whose bilinear sources can include one given input index: those with source in
    # [i - 1, i + 1), at most ceil(2 / scale) + 1 of them; one more covers the rounding of the start index.
    return math.ceil(2.0 / scale) + 2


def _split_merge_consistency_forward(feat_org, feat_pieces, weight, rows, cols, traceable):
    """Launch the forward kernels. Returns (loss in the reference's dtype, D (B, K, h, w) fp32)."""
    b, c, h, w = feat_org.shape
    hp, wp = feat_pieces.shape[-2:]
    k = weight.shape[0]
    hm, wm = rows * hp, cols * wp
    block_hw = _block_hw(b, h * w)
    n_hw = triton.cdiv(h * w, block_hw)
    device = feat_org.device
    diff = _empty((b, k, h, w), torch.float32, device)  # (B, K, h, w)
    partial = _empty((b * n_hw,), torch.float32, device)
    loss = _empty((), _loss_dtype(feat_org, feat_pieces, weight), device)
    fwd = wrap_triton(_split_merge_consistency_fwd_kernel) if traceable else _split_merge_consistency_fwd_kernel
    fwd[(b, n_hw)](
        feat_org, feat_pieces, weight, diff, partial,
        b, c, k, h, w, hp, wp, cols, hm, wm,
        *feat_org.stride(), *feat_pieces.stride(), *weight.stride(),
        _resize_scale(hm, h), _resize_scale(wm, w),
        RESIZE=(hm, wm) != (h, w), BLOCK_K=_block_k(k), BLOCK_C=64 if c >= 64 else max(16, triton.next_power_of_2(c)),
        BLOCK_HW=block_hw, num_warps=4,
    )
    finish = wrap_triton(_split_merge_consistency_loss_kernel) if traceable else _split_merge_consistency_loss_kernel
    finish[(1,)](partial, loss, b * n_hw, b * k * h * w, BLOCK=256, num_warps=4)
    return loss, diff


def _split_merge_consistency_backward(grad_loss, diff, feat_org, feat_pieces, weight, rows, cols, weight_grad,
                                      traceable):
    """Launch the backward kernel. Returns (grad feat_org, grad feat_pieces, grad weight or an empty tensor)."""
    b, c, h, w = feat_org.shape
    hp, wp = feat_pieces.shape[-2:]
    k = weight.shape[0]
    hm, wm = rows * hp, cols * wp
    resize = (hm, wm) != (h, w)
    device = feat_org.device
    grad_org = _empty_like(feat_org)  # (B, C, h, w)
    grad_pieces = _empty_like(feat_pieces)  # (P*B, C, h', w')
    grad_weight_per_sample = _empty((b, k, c) if weight_grad else (1,), torch.float32, device)  # (B, K, C)
    block_c = 64 if c >= 64 else max(16, triton.next_power_of_2(c))
    bwd = wrap_triton(_split_merge_consistency_bwd_kernel) if traceable else _split_merge_consistency_bwd_kernel
    bwd[(b + rows * cols * b, triton.cdiv(c, block_c))](
        grad_loss, diff, weight, feat_org, feat_pieces, grad_org, grad_pieces, grad_weight_per_sample,
        b, c, k, h, w, hp, wp, cols, hm, wm,
        *feat_org.stride(), *feat_pieces.stride(), *grad_org.stride(), *grad_pieces.stride(), *weight.stride(),
        _resize_scale(hm, h), _resize_scale(wm, w),
        RESIZE=resize, WEIGHT_GRAD=weight_grad,
        TAPS_H=_resize_taps(_resize_scale(hm, h)) if resize else 1,
        TAPS_W=_resize_taps(_resize_scale(wm, w)) if resize else 1,
        BLOCK_K=_block_k(k), BLOCK_C=block_c,
        BLOCK_HW=min(64, max(16, triton.next_power_of_2(h * w))),
        BLOCK_Q=min(64, max(16, triton.next_power_of_2(hp * wp))),
        num_warps=4,
    )
    if weight_grad:
        grad_weight = grad_weight_per_sample.sum(0).to(weight.dtype)  # (K, C)
    else:
        grad_weight = weight.new_zeros(0)
    return grad_org, grad_pieces, grad_weight


def _runs_triton(*tensors: torch.Tensor) -> bool:
    return tensors[0].device.type == "cuda" and all(t.dtype in TRITON_DTYPES for t in tensors)


# ----------------------------------------------------------------------------------------------------------
# Registered ops (torch.ops.smec_fast.*) and their autograd
# ----------------------------------------------------------------------------------------------------------


@triton_op("smec_fast::split_merge_consistency", mutates_args=())
def _split_merge_consistency_op(feat_org: torch.Tensor, feat_pieces: torch.Tensor, weight: torch.Tensor,
                                rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_con, D): Triton kernels on CUDA, the reference elsewhere and for float64."""
    if _runs_triton(feat_org, feat_pieces, weight):
        return _split_merge_consistency_forward(feat_org, feat_pieces, weight, rows, cols, traceable=True)
    diff = _consistency_difference_reference(feat_org, feat_pieces, weight, (rows, cols))  # (B, K, h, w)
    return diff.pow(2).mean(), diff


@triton_op("smec_fast::split_merge_consistency_backward", mutates_args=())
def _split_merge_consistency_backward_op(grad_loss: torch.Tensor, diff: torch.Tensor, feat_org: torch.Tensor,
                                         feat_pieces: torch.Tensor, weight: torch.Tensor, rows: int, cols: int,
                                         weight_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (feat_org, feat_pieces, weight); the weight's is empty unless `weight_grad`."""
    if _runs_triton(feat_org, feat_pieces, weight) and diff.dtype == torch.float32:
        return _split_merge_consistency_backward(grad_loss, diff, feat_org, feat_pieces, weight, rows, cols,
                                                 weight_grad, traceable=True)
    return _split_merge_consistency_backward_reference(grad_loss, diff, feat_org, feat_pieces, weight, rows, cols,
                                                       weight_grad)


def _setup_context(ctx, inputs, output):
    feat_org, feat_pieces, weight, rows, cols = inputs
    _, diff = output
    ctx.grid = (rows, cols)
    ctx.save_for_backward(feat_org, feat_pieces, weight, diff)


def _backward(ctx, grad_loss, grad_diff):
    # grad_diff is never used: D is an internal output that the public function does not return.
    feat_org, feat_pieces, weight, diff = ctx.saved_tensors
    need_org, need_pieces, need_weight = ctx.needs_input_grad[:3]
    grad_org, grad_pieces, grad_weight = torch.ops.smec_fast.split_merge_consistency_backward(
        grad_loss, diff, feat_org, feat_pieces, weight, ctx.grid[0], ctx.grid[1], need_weight)
    return (grad_org if need_org else None, grad_pieces if need_pieces else None,
            grad_weight if need_weight else None, None, None)


_split_merge_consistency_op.register_autograd(_backward, setup_context=_setup_context)


class _SplitMergeConsistencyTriton(torch.autograd.Function):
    """The Triton kernels called directly on any device (CPU tensors need TRITON_INTERPRET=1)."""

    @staticmethod
    def forward(ctx, feat_org, feat_pieces, weight, rows, cols):
        loss, diff = _split_merge_consistency_forward(feat_org, feat_pieces, weight, rows, cols, traceable=False)
        ctx.grid = (rows, cols)
        ctx.save_for_backward(feat_org, feat_pieces, weight, diff)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        feat_org, feat_pieces, weight, diff = ctx.saved_tensors
        need_org, need_pieces, need_weight = ctx.needs_input_grad[:3]
        grad_org, grad_pieces, grad_weight = _split_merge_consistency_backward(
            grad_loss.contiguous(), diff, feat_org, feat_pieces, weight, ctx.grid[0], ctx.grid[1], need_weight,
            traceable=False)
        return (grad_org if need_org else None, grad_pieces if need_pieces else None,
                grad_weight if need_weight else None, None, None)


# ----------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------


def split_merge_consistency_triton(
    feat_org: torch.Tensor,
    feat_pieces: torch.Tensor,
    weight: torch.Tensor,
    grid: tuple[int, int] = (1, 2),
    detach_weight: bool = True,
) -> torch.Tensor:
    """`split_merge_consistency_reference` computed by the Triton kernels, on whatever device the tensors are
    (on CPU only under TRITON_INTERPRET=1). Inputs must be fp32, fp16 or bf16; the loss has the reference's
    dtype; D and all sums are accumulated in fp32."""
    _check_inputs(feat_org, feat_pieces, weight, grid)
    if not all(t.dtype in TRITON_DTYPES for t in (feat_org, feat_pieces, weight)):
        raise TypeError("split_merge_consistency_triton: inputs must be float32, float16 or bfloat16, got "
                        f"{feat_org.dtype}, {feat_pieces.dtype}, {weight.dtype}")
    if detach_weight:
        weight = weight.detach()
    return _SplitMergeConsistencyTriton.apply(feat_org, feat_pieces, weight, int(grid[0]), int(grid[1]))


def split_merge_consistency(
    feat_org: torch.Tensor,
    feat_pieces: torch.Tensor,
    weight: torch.Tensor,
    grid: tuple[int, int] = (1, 2),
    detach_weight: bool = True,
) -> torch.Tensor:
    """L_con (same signature and result as `split_merge_consistency_reference`).

    With the "fused" kernel backend (the default) this calls the registered op
    `torch.ops.smec_fast.split_merge_consistency`: the Triton kernels on CUDA, the reference on other devices;
    with the "reference" backend (`set_kernel_backend("reference")`) it calls the reference directly.
    """
    if get_kernel_backend() == "reference":
        return split_merge_consistency_reference(feat_org, feat_pieces, weight, grid, detach_weight)
    _check_inputs(feat_org, feat_pieces, weight, grid)
    if detach_weight:
        weight = weight.detach()
    loss, _ = torch.ops.smec_fast.split_merge_consistency(feat_org, feat_pieces, weight, int(grid[0]), int(grid[1]))
    return loss
