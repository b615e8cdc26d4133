"""Cross-entropy plus early-learning regularisation (Liu et al., NeurIPS 2020; SMEC eq. 3-4).

ELR keeps a running target t_i per training sample (N x K, indexed by dataset index):

    t_i <- beta * t_i + (1 - beta) * p_i / sum(p_i),  p = clamp(softmax(z), 1e-4, 1 - 1e-4), detached
    L   = CE(z, y) + lam * mean_i log(1 - <t_i, p_i>)

as in ELR's public code (the clamped probabilities enter both the target update and the penalty).

Fused kernels. The forward kernel reads each row's logits once and does softmax, CE, the target update
(written in place into `targets` at the batch's indices) and the ELR term, summing the batch's loss in a
single program, so the op is one launch; it also keeps the updated target rows (B, K) for the backward.
The backward kernel recomputes the softmax and writes, with s = softmax(z), m = 1 where the clamp passed s,
a = t * m * s and A = sum(a):

    dL/dz = g / B * (s - onehot(y) - lam * (a - s * A) / (1 - <t, p>))

The targets are constants of the backward (ELR's design: its target is a detached running average).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .backend import get_kernel_backend

ELR_CLAMP = 1e-4

# Logit dtypes the Triton kernels take (the targets must be float32, as the trainer keeps them);
# anything else runs the reference.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2 or targets.dim() != 2 or logits.shape[1] != targets.shape[1]:
        raise ValueError(f"elr_cross_entropy: expected logits (B, K) and targets (N, K), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")


def elr_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor,
    beta: float,
    lam: float,
) -> torch.Tensor:
    """CE + ELR for one batch; updates `targets[index]` in place.

    Args:
        logits: (B, K) class scores; computed in at least fp32.
        labels: (B,) int64 (possibly noisy) labels.
        targets: (N, K) running ELR targets of the whole training set, updated in place.
        index: (B,) int64 dataset indices of the batch's samples (distinct within a batch).
        beta: target momentum.
        lam: ELR weight.

    Returns:
        Scalar loss CE + lam * ELR.
    """
    _check_inputs(logits, targets)
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (B, K)
    ce = F.cross_entropy(z, labels)
    p = torch.softmax(z, dim=1).clamp(ELR_CLAMP, 1.0 - ELR_CLAMP)  # (B, K)
    with torch.no_grad():
        p_detached = p.detach()
        updated = beta * targets[index] + (1.0 - beta) * (p_detached / p_detached.sum(1, keepdim=True)).to(
            targets.dtype)  # (B, K)
        targets[index] = updated
    elr = torch.log(1.0 - (updated.to(p.dtype) * p).sum(dim=1)).mean()
    return ce + lam * elr


def _elr_cross_entropy_backward_reference(grad_loss, logits, labels, updated, lam):
    """dL/dlogits in plain PyTorch with the updated target rows held fixed; the CPU half of the backward op."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (B, K)
    s = torch.softmax(z, dim=1)  # (B, K)
    passed = (s >= ELR_CLAMP) & (s <= 1.0 - ELR_CLAMP)  # where the clamp lets the gradient through
    p = s.clamp(ELR_CLAMP, 1.0 - ELR_CLAMP)
    t = updated.to(z.dtype)  # (B, K)
    dot = (t * p).sum(1, keepdim=True)  # (B, 1)
    a = torch.where(passed, t * s, torch.zeros_like(s))
    onehot = F.one_hot(labels, z.shape[1]).to(z.dtype)
    grad = s - onehot - lam * (a - s * a.sum(1, keepdim=True)) / (1.0 - dot)
    return (grad * (grad_loss.to(z.dtype) / z.shape[0])).to(logits.dtype)


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _softmax_rows(z_ptr, r, r_mask, k, k_mask, stride_zb, stride_zk):
    # Logits of rows r in fp32 (-inf in the padding columns) and their softmax.
    z = tl.load(z_ptr + r[:, None].to(tl.int64) * stride_zb + k[None, :] * stride_zk,
                mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
    z = tl.where(k_mask[None, :], z, float("-inf"))  # (BLOCK_B, BLOCK_K)
    z_max = tl.max(z, axis=1)
    ex = tl.exp(z - z_max[:, None])
    ex_sum = tl.sum(ex, axis=1)
    return z, z_max, ex_sum, ex / ex_sum[:, None]


@triton.jit
def _elr_cross_entropy_fwd_kernel(
    z_ptr,  # (B, K) logits, fp32/fp16/bf16, any strides
    y_ptr,  # (B,) int64 labels
    t_ptr,  # (N, K) fp32 running targets, updated in place at rows idx_ptr[:B]
    idx_ptr,  # (B,) int64 dataset indices of the batch, distinct
    upd_ptr,  # (B, K) fp32 out: the updated target rows, kept for the backward
    loss_ptr,  # () fp32 out: mean CE + lam * mean ELR
    B,  # batch size
    K,  # classes
    stride_zb, stride_zk,  # strides of the logits
    stride_tn, stride_tk,  # strides of the targets
    beta,  # target momentum
    one_minus_beta,  # 1 - beta, rounded from float64 as the reference's scalar is
    lam,  # ELR weight
    clamp_lo,  # 1e-4
    clamp_hi,  # 1 - 1e-4, rounded from float64 as the reference's bound is
    BLOCK_B: tl.constexpr,  # rows per step; one program walks the whole batch so that the loss needs no second pass
    BLOCK_K: tl.constexpr,  # >= K
):
    k = tl.arange(0, BLOCK_K)
    k_mask = k < K
    ce_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    elr_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for r0 in range(0, B, BLOCK_B):
        r = r0 + tl.arange(0, BLOCK_B)
        r_mask = r < B
        mask = r_mask[:, None] & k_mask[None, :]
        z, z_max, ex_sum, s = _softmax_rows(z_ptr, r, r_mask, k, k_mask, stride_zb, stride_zk)
        y = tl.load(y_ptr + r, mask=r_mask, other=0)
        z_y = tl.sum(tl.where(k[None, :] == y[:, None], z, 0.0), axis=1)
        ce = -(z_y - z_max - tl.log(ex_sum))  # -log_softmax(z)[y]
        p = tl.where(k_mask[None, :], tl.minimum(tl.maximum(s, clamp_lo), clamp_hi), 0.0)
        q = p / tl.sum(p, axis=1)[:, None]
        idx = tl.load(idx_ptr + r, mask=r_mask, other=0)
        t_row = t_ptr + idx[:, None].to(tl.int64) * stride_tn + k[None, :] * stride_tk
        t = beta * tl.load(t_row, mask=mask, other=0.0) + one_minus_beta * q
        tl.store(t_row, t, mask=mask)
        tl.store(upd_ptr + r[:, None].to(tl.int64) * K + k[None, :], t, mask=mask)
        elr = tl.log(1.0 - tl.sum(t * p, axis=1))
        ce_sum += tl.where(r_mask, ce, 0.0)
        elr_sum += tl.where(r_mask, elr, 0.0)
    loss = tl.sum(ce_sum, axis=0) / B + lam * (tl.sum(elr_sum, axis=0) / B)
    tl.store(loss_ptr, loss.to(loss_ptr.dtype.element_ty))


@triton.jit
def _elr_cross_entropy_bwd_kernel(
    g_ptr,  # () upstream gradient of the loss
    z_ptr,  # (B, K) logits, any strides
    y_ptr,  # (B,) int64 labels
    upd_ptr,  # (B, K) fp32 updated target rows saved by the forward
    dz_ptr,  # (B, K) out: gradient for the logits, in their dtype
    B,  # batch size
    K,  # classes
    stride_zb, stride_zk,  # strides of the logits
    stride_dzb, stride_dzk,  # strides of the gradient
    lam,  # ELR weight
    clamp_lo,  # 1e-4
    clamp_hi,  # 1 - 1e-4
    BLOCK_B: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # >= K
):
    r = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    r_mask = r < B
    k = tl.arange(0, BLOCK_K)
    k_mask = k < K
    mask = r_mask[:, None] & k_mask[None, :]
    z, z_max, ex_sum, s = _softmax_rows(z_ptr, r, r_mask, k, k_mask, stride_zb, stride_zk)
    s = tl.where(k_mask[None, :], s, 0.0)
    passed = (s >= clamp_lo) & (s <= clamp_hi)  # the clamp's gradient is 1 inside [lo, hi], 0 outside
    p = tl.minimum(tl.maximum(s, clamp_lo), clamp_hi)
    t = tl.load(upd_ptr + r[:, None].to(tl.int64) * K + k[None, :], mask=mask, other=0.0)
    dot = tl.sum(t * p, axis=1)
    a = tl.where(passed & k_mask[None, :], t * s, 0.0)
    y = tl.load(y_ptr + r, mask=r_mask, other=0)
    onehot = tl.where(k[None, :] == y[:, None], 1.0, 0.0)
    grad = s - onehot - lam * (a - s * tl.sum(a, axis=1)[:, None]) / (1.0 - dot)[:, None]
    g = tl.load(g_ptr).to(tl.float32) / B
    out = dz_ptr + r[:, None].to(tl.int64) * stride_dzb + k[None, :] * stride_dzk
    tl.store(out, (grad * g).to(dz_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------------------


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer every element of which a kernel writes (the tests hand out NaN-filled ones instead)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    """Like `_empty`, with the layout of `t`."""
    return torch.empty_like(t)


def _elr_cross_entropy_forward(logits, labels, targets, index, beta, lam, traceable):
    """Launch the forward kernel (updates `targets` in place). Returns (loss fp32, updated rows (B, K) fp32)."""
    b, k = logits.shape
    updated = _empty((b, k), torch.float32, logits.device)  # (B, K)
    loss = _empty((), torch.float32, logits.device)
    fwd = wrap_triton(_elr_cross_entropy_fwd_kernel) if traceable else _elr_cross_entropy_fwd_kernel
    fwd[(1,)](
        logits, labels, targets, index, updated, loss, b, k,
        *logits.stride(), *targets.stride(),
        float(beta), 1.0 - float(beta), float(lam), ELR_CLAMP, 1.0 - ELR_CLAMP,
        BLOCK_B=64, BLOCK_K=triton.next_power_of_2(k), num_warps=4,
    )
    return loss, updated


def _elr_cross_entropy_backward(grad_loss, logits, labels, updated, lam, traceable):
    """Launch the backward kernel. Returns dL/dlogits in the logits' dtype and layout."""
    b, k = logits.shape
    grad_logits = _empty_like(logits)  # (B, K)
    block_b = 64
    bwd = wrap_triton(_elr_cross_entropy_bwd_kernel) if traceable else _elr_cross_entropy_bwd_kernel
    bwd[(triton.cdiv(b, block_b),)](
        grad_loss, logits, labels, updated, grad_logits, b, k,
        *logits.stride(), *grad_logits.stride(),
        float(lam), ELR_CLAMP, 1.0 - ELR_CLAMP,
        BLOCK_B=block_b, BLOCK_K=triton.next_power_of_2(k), num_warps=4,
    )
    return grad_logits


def _runs_triton(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    return logits.device.type == "cuda" and logits.dtype in TRITON_DTYPES and targets.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------
# Registered ops (torch.ops.smec_fast.*) and autograd
# ----------------------------------------------------------------------------------------------------------


@triton_op("smec_fast::elr_cross_entropy", mutates_args={"targets"})
def _elr_cross_entropy_op(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, index: torch.Tensor,
                          beta: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, updated target rows); updates `targets[index]` in place. Triton on CUDA, the reference elsewhere."""
    if _runs_triton(logits, targets):
        return _elr_cross_entropy_forward(logits, labels, targets, index, beta, lam, traceable=True)
    loss = elr_cross_entropy_reference(logits, labels, targets, index, beta, lam)
    return loss, targets[index]  # advanced indexing copies: the rows just written


@triton_op("smec_fast::elr_cross_entropy_backward", mutates_args=())
def _elr_cross_entropy_backward_op(grad_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                                   updated: torch.Tensor, lam: float) -> torch.Tensor:
    """dL/dlogits with the updated target rows held fixed."""
    if _runs_triton(logits, updated):
        return _elr_cross_entropy_backward(grad_loss, logits, labels, updated, lam, traceable=True)
    return _elr_cross_entropy_backward_reference(grad_loss, logits, labels, updated, lam)


class _ElrCrossEntropyFunction(torch.autograd.Function):
    """Autograd for the fused forward. torch.library refuses `register_autograd` on an op that mutates an
    argument (here `targets`), so the registered forward and backward ops are paired by this Function,
    which torch.compile traces like any other. `use_ops=False` launches the Triton kernels directly
    (on CPU tensors under TRITON_INTERPRET=1)."""

    @staticmethod
    def forward(ctx, logits, labels, targets, index, beta, lam, use_ops):
        if use_ops:
            loss, updated = torch.ops.smec_fast.elr_cross_entropy(logits, labels, targets, index, beta, lam)
        else:
            loss, updated = _elr_cross_entropy_forward(logits, labels, targets, index, beta, lam, traceable=False)
        ctx.save_for_backward(logits, labels, updated)
        ctx.lam = lam
        ctx.use_ops = use_ops
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, labels, updated = ctx.saved_tensors
        if ctx.use_ops:
            grad = torch.ops.smec_fast.elr_cross_entropy_backward(grad_loss, logits, labels, updated, ctx.lam)
        else:
            grad = _elr_cross_entropy_backward(grad_loss.contiguous(), logits, labels, updated, ctx.lam,
                                               traceable=False)
        return grad, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------


def elr_cross_entropy_triton(
    logits: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor,
    beta: float,
    lam: float,
) -> torch.Tensor:
    """`elr_cross_entropy_reference` computed by the Triton kernels on whatever device the tensors are (on CPU
    only under TRITON_INTERPRET=1). Logits fp32/fp16/bf16, targets fp32; the loss is fp32."""
    _check_inputs(logits, targets)
    if logits.dtype not in TRITON_DTYPES or targets.dtype != torch.float32:
        raise TypeError("elr_cross_entropy_triton: logits must be float32, float16 or bfloat16 and targets "
                        f"float32, got {logits.dtype} and {targets.dtype}")
    return _ElrCrossEntropyFunction.apply(logits, labels, targets, index, float(beta), float(lam), False)


def elr_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor,
    beta: float,
    lam: float,
) -> torch.Tensor:
    """CE + ELR (same signature, result and in-place target update as `elr_cross_entropy_reference`).

    With the "fused" kernel backend (the default) this calls the registered op
    `torch.ops.smec_fast.elr_cross_entropy`: the Triton kernel on CUDA, the reference on other devices; with
    the "reference" backend (`set_kernel_backend("reference")`) it calls the reference directly.
    """
    if get_kernel_backend() == "reference":
        return elr_cross_entropy_reference(logits, labels, targets, index, beta, lam)
    _check_inputs(logits, targets)
    return _ElrCrossEntropyFunction.apply(logits, labels, targets, index, float(beta), float(lam), True)
