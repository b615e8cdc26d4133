"""The Triton kernels against the pure-PyTorch references: forward, every gradient, the ELR target update.

On the CPU the kernels run in Triton's interpreter (tests/conftest.py switches it on), so shapes stay small;
with CUDA present (or TORCH_DEVICE=cuda) the same tests run the compiled kernels. Every output buffer the
kernels fill is handed out filled with NaN, so an element a kernel fails to write fails the comparison.

Precision rules: fp32 inputs are compared tightly with the fp32 reference. For fp16/bf16 inputs the error
against a float64 evaluation of the same (rounded) inputs must be at most twice the reference's own error
in that precision, plus half an ulp of the output dtype and four fp32 ulps at the largest value (rounding
the result into the output dtype, which even an exact kernel cannot avoid, and fp32 arithmetic, in which
both the kernels and, where it promotes, the reference compute).
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest
import torch

from smec_fast.kernels import (
    cam_reference,
    elr_cross_entropy,
    elr_cross_entropy_reference,
    elr_cross_entropy_triton,
    get_kernel_backend,
    kernel_backend,
    merge_piece_maps,
    merge_piece_maps_adjoint,
    set_kernel_backend,
    split_merge_consistency,
    split_merge_consistency_reference,
    split_merge_consistency_triton,
)
from smec_fast.split_merge import split_and_flip

# The op modules themselves (the package's attributes of the same names are the public functions).
smc_module = importlib.import_module("smec_fast.kernels.split_merge_consistency")
elr_module = importlib.import_module("smec_fast.kernels.elr_cross_entropy")


@pytest.fixture(autouse=True)
def _nan_buffers(monkeypatch):
    """Every buffer the launchers allocate starts as NaN: an element no kernel writes stays NaN."""

    def empty(shape, dtype, device):
        return torch.full(shape, math.nan, dtype=dtype, device=device)

    def empty_like(t):
        return torch.full_like(t, math.nan)

    for module in (smc_module, elr_module):
        monkeypatch.setattr(module, "_empty", empty)
        monkeypatch.setattr(module, "_empty_like", empty_like)


def _max_err(actual: torch.Tensor, exact: torch.Tensor) -> float:
    return (actual.double() - exact.double()).abs().max().item()


def assert_close_fp32(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Tight fp32 comparison; the absolute part scales with the tensor's largest value."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    atol = rtol * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_within_twice_reference_error(actual: torch.Tensor, reference: torch.Tensor, exact: torch.Tensor,
                                        what: str) -> None:
    """Low-precision rule: max error vs float64 <= 2 x the reference's own max error + output rounding."""
    assert actual.dtype == reference.dtype and actual.shape == reference.shape, what
    assert not torch.isnan(actual).any(), f"{what}: NaN (an unwritten element?)"
    err, ref_err = _max_err(actual, exact), _max_err(reference, exact)
    # Floor: half an ulp of the output dtype (rounding the result into it, unavoidable even for an exact
    # kernel) plus four fp32 ulps: the kernels compute in fp32, and where the reference does too (it promotes
    # fp16/bf16 logits to fp32) its own error is fp32 rounding that can be near zero by chance.
    eps = 0.5 * torch.finfo(actual.dtype).eps + 4 * torch.finfo(torch.float32).eps
    floor = eps * exact.abs().max().item()
    assert err <= 2 * ref_err + floor, f"{what}: error {err:.3g} > 2 x reference's {ref_err:.3g} + {floor:.3g}"


def test_output_buffers_are_poisoned():
    buf = smc_module._empty((3, 4), torch.float32, torch.device("cpu"))
    assert torch.isnan(buf).all() and torch.isnan(elr_module._empty_like(buf)).all()


# ----------------------------------------------------------------------------------------------------------
# Split-merge consistency
# ----------------------------------------------------------------------------------------------------------

# (grid, batch, channels, classes, original map (h, w), piece map (h', w'))
CONSISTENCY_CASES = [
    pytest.param((1, 1), 1, 64, 7, (4, 5), (4, 5), id="1x1-b1"),
    pytest.param((1, 2), 3, 64, 8, (7, 7), (7, 4), id="1x2-224wide-resize-k8"),
    pytest.param((1, 2), 2, 37, 7, (3, 6), (3, 3), id="1x2-exact-c37"),
    pytest.param((2, 1), 2, 33, 7, (5, 3), (3, 3), id="2x1-resize-height"),
    pytest.param((2, 2), 2, 64, 7, (3, 3), (2, 2), id="2x2-resize"),
    pytest.param((4, 4), 1, 17, 7, (7, 7), (2, 2), id="4x4-resize"),
    pytest.param((1, 2), 1, 3, 7, (5, 9), (2, 2), id="1x2-upsample-c3"),
    pytest.param((1, 2), 1, 512, 7, (7, 7), (7, 4), id="1x2-c512"),
]


def _consistency_inputs(grid, b, c, k, org, piece, device, dtype=torch.float32, weight_dtype=None):
    p = grid[0] * grid[1]
    feat_org = torch.randn(b, c, *org).to(device=device, dtype=dtype).requires_grad_()
    feat_pieces = torch.randn(p * b, c, *piece).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(k, c) / math.sqrt(c)).to(device=device, dtype=weight_dtype or dtype).requires_grad_()
    return feat_org, feat_pieces, weight


def _loss_and_grads(fn, inputs, grid, detach_weight=False):
    for t in inputs:
        t.grad = None
    loss = fn(*inputs, grid, detach_weight)
    loss.backward()
    return loss.detach(), [t.grad for t in inputs]


def _consistency_impls(device):
    impls = [split_merge_consistency_triton]
    if device.type == "cuda":  # the registered op launches the same kernels only on CUDA
        impls.append(split_merge_consistency)
    return impls


@pytest.mark.parametrize("grid,b,c,k,org,piece", CONSISTENCY_CASES)
def test_consistency_fp32_matches_reference(kernel_device, grid, b, c, k, org, piece):
    inputs = _consistency_inputs(grid, b, c, k, org, piece, kernel_device)
    ref_loss, ref_grads = _loss_and_grads(split_merge_consistency_reference, inputs, grid)
    for impl in _consistency_impls(kernel_device):
        loss, grads = _loss_and_grads(impl, inputs, grid)
        assert_close_fp32(loss, ref_loss, f"{impl.__name__} loss")
        for name, got, want in zip(("feat_org", "feat_pieces", "weight"), grads, ref_grads):
            assert_close_fp32(got, want, f"{impl.__name__} grad {name}")


@pytest.mark.parametrize("grid,b,c,k,org,piece", [CONSISTENCY_CASES[1], CONSISTENCY_CASES[4]])
def test_consistency_forward_keeps_the_cam_difference(kernel_device, grid, b, c, k, org, piece):
    """D (saved for the backward) is C_org - merge(C_pieces) at every position."""
    feat_org, feat_pieces, weight = (t.detach() for t in _consistency_inputs(grid, b, c, k, org, piece,
                                                                              kernel_device))
    _, diff = smc_module._split_merge_consistency_forward(feat_org, feat_pieces, weight, *grid, traceable=False)
    expected = cam_reference(feat_org, weight) - merge_piece_maps(cam_reference(feat_pieces, weight), grid, org)
    assert_close_fp32(diff, expected, "D")


def test_consistency_detached_weight_gets_no_gradient(kernel_device):
    grid = (1, 2)
    inputs = _consistency_inputs(grid, 2, 64, 7, (7, 7), (7, 4), kernel_device)
    ref_loss, ref_grads = _loss_and_grads(split_merge_consistency_reference, inputs, grid, detach_weight=True)
    for impl in _consistency_impls(kernel_device):
        loss, grads = _loss_and_grads(impl, inputs, grid, detach_weight=True)
        assert grads[2] is None
        assert_close_fp32(loss, ref_loss, "loss")
        assert_close_fp32(grads[0], ref_grads[0], "grad feat_org")
        assert_close_fp32(grads[1], ref_grads[1], "grad feat_pieces")


def test_consistency_channels_last_inputs(kernel_device):
    grid = (2, 2)
    inputs = [t.detach().to(memory_format=torch.channels_last).requires_grad_() if t.dim() == 4 else t
              for t in _consistency_inputs(grid, 2, 64, 7, (3, 3), (2, 2), kernel_device)]
    ref_loss, ref_grads = _loss_and_grads(split_merge_consistency_reference, inputs, grid)
    loss, grads = _loss_and_grads(split_merge_consistency_triton, inputs, grid)
    assert_close_fp32(loss, ref_loss, "loss")
    for name, got, want in zip(("feat_org", "feat_pieces", "weight"), grads, ref_grads):
        assert_close_fp32(got, want, f"grad {name}")
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("grid", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 4)])
def test_consistency_is_exactly_zero_for_pieces_of_the_same_features(kernel_device, grid):
    """Pieces cut from the original features themselves merge back exactly: L_con = 0 and zero gradients."""
    feat_org = torch.randn(2, 16, 8, 8, device=kernel_device)
    feat_pieces = split_and_flip(feat_org, grid).contiguous().requires_grad_()
    weight = torch.randn(7, 16, device=kernel_device)
    feat_org.requires_grad_()
    loss = split_merge_consistency_triton(feat_org, feat_pieces, weight, grid)
    loss.backward()
    assert loss.item() == 0.0
    assert feat_org.grad.abs().max().item() == 0.0 and feat_pieces.grad.abs().max().item() == 0.0


LOW_PRECISION_CASES = [CONSISTENCY_CASES[1], CONSISTENCY_CASES[4], CONSISTENCY_CASES[6]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grid,b,c,k,org,piece", LOW_PRECISION_CASES)
def test_consistency_low_precision(kernel_device, dtype, grid, b, c, k, org, piece):
    inputs = _consistency_inputs(grid, b, c, k, org, piece, kernel_device, dtype)
    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    exact_loss, exact_grads = _loss_and_grads(split_merge_consistency_reference, exact_inputs, grid)
    ref_loss, ref_grads = _loss_and_grads(split_merge_consistency_reference, inputs, grid)
    for impl in _consistency_impls(kernel_device):
        loss, grads = _loss_and_grads(impl, inputs, grid)
        assert loss.dtype == dtype
        assert_within_twice_reference_error(loss, ref_loss, exact_loss, f"{impl.__name__} loss")
        for name, got, want, exact in zip(("feat_org", "feat_pieces", "weight"), grads, ref_grads, exact_grads):
            assert_within_twice_reference_error(got, want, exact, f"{impl.__name__} grad {name}")


def test_consistency_bf16_features_with_fp32_weight(kernel_device):
    """Autocast's mix: bf16 features, fp32 weight. The reference promotes to fp32, and so does the kernel."""
    grid, org, piece = (1, 2), (7, 7), (7, 4)
    feat_org, feat_pieces, _ = _consistency_inputs(grid, 2, 64, 7, org, piece, kernel_device, torch.bfloat16)
    weight = torch.randn(7, 64, device=kernel_device).div_(8).requires_grad_()
    inputs = [feat_org, feat_pieces, weight]
    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    exact_loss, exact_grads = _loss_and_grads(split_merge_consistency_reference, exact_inputs, grid)
    ref_loss, ref_grads = _loss_and_grads(split_merge_consistency_reference, inputs, grid)
    loss, grads = _loss_and_grads(split_merge_consistency_triton, inputs, grid)
    assert loss.dtype == ref_loss.dtype == torch.float32
    assert_within_twice_reference_error(loss, ref_loss, exact_loss, "loss")
    for name, got, want, exact in zip(("feat_org", "feat_pieces", "weight"), grads, ref_grads, exact_grads):
        assert got.dtype == want.dtype
        assert_within_twice_reference_error(got, want, exact, f"grad {name}")


# ----------------------------------------------------------------------------------------------------------
# The algebra the fused consistency kernels rest on, and the reference backward (float64, no Triton)
# ----------------------------------------------------------------------------------------------------------

ALGEBRA_CASES = [((1, 1), (4, 5), (4, 5)), ((1, 2), (7, 7), (7, 4)), ((2, 1), (5, 3), (3, 3)),
                 ((2, 2), (3, 3), (2, 2)), ((4, 4), (7, 7), (2, 2)), ((1, 2), (5, 9), (2, 2))]


@pytest.mark.parametrize("grid,org,piece", ALGEBRA_CASES)
def test_merge_commutes_with_the_channel_contraction(grid, org, piece):
    """C_org - merge(C_pieces) = W . (F_org - merge(F_pieces)): one contraction instead of three."""
    b, c, k = 3, 10, 7
    p = grid[0] * grid[1]
    feat_org = torch.randn(b, c, *org, dtype=torch.float64)
    feat_pieces = torch.randn(p * b, c, *piece, dtype=torch.float64)
    weight = torch.randn(k, c, dtype=torch.float64)
    cams = cam_reference(feat_org, weight) - merge_piece_maps(cam_reference(feat_pieces, weight), grid, org)
    features = cam_reference(feat_org - merge_piece_maps(feat_pieces, grid, org), weight)
    torch.testing.assert_close(features, cams, rtol=0, atol=1e-12)
    assert cams.abs().max() > 1.0  # the identity is not checked on zeros


@pytest.mark.parametrize("grid,org,piece", ALGEBRA_CASES)
def test_merge_adjoint_is_the_transpose(grid, org, piece):
    """<merge(x), y> = <x, merge_adjoint(y)>, the identity the backward's gather rests on."""
    p = grid[0] * grid[1]
    x = torch.randn(p * 2, 3, *piece, dtype=torch.float64)
    y = torch.randn(2, 3, *org, dtype=torch.float64)
    lhs = (merge_piece_maps(x, grid, org) * y).sum()
    rhs = (x * merge_piece_maps_adjoint(y, grid, piece)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid,org,piece", ALGEBRA_CASES[1:3])
def test_registered_op_backward_matches_reference_autograd_float64(grid, org, piece):
    """On the CPU the op's backward is an explicit PyTorch formula; it must equal autograd of the reference."""
    inputs = [t.detach().double().requires_grad_() for t in _consistency_inputs(grid, 2, 6, 7, org, piece, "cpu")]
    ref_loss, ref_grads = _loss_and_grads(split_merge_consistency_reference, inputs, grid)
    with kernel_backend("fused"):
        loss, grads = _loss_and_grads(split_merge_consistency, inputs, grid)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-13, atol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------------------
# CE + ELR
# ----------------------------------------------------------------------------------------------------------


def _elr_inputs(b, k, device, dtype=torch.float32, n=200, scale=3.0):
    logits = (scale * torch.randn(b, k)).to(device=device, dtype=dtype).requires_grad_()
    labels = torch.randint(0, k, (b,), device=device)
    targets = torch.rand(n, k, device=device)
    targets /= targets.sum(1, keepdim=True)
    index = torch.randperm(n, device=device)[:b]
    return logits, labels, targets, index


def _elr_run(fn, logits, labels, targets, index, beta=0.7, lam=3.0):
    logits.grad = None
    targets = targets.clone()
    loss = fn(logits, labels, targets, index, beta, lam)
    loss.backward()
    return loss.detach(), targets, logits.grad


def _elr_impls(device):
    impls = [elr_cross_entropy_triton]
    if device.type == "cuda":
        impls.append(elr_cross_entropy)
    return impls


@pytest.mark.parametrize("b,k,scale", [(1, 7, 3.0), (5, 8, 3.0), (67, 7, 3.0), (9, 7, 40.0)],
                         ids=["b1-k7", "b5-k8", "b67-two-row-blocks", "clamp-active"])
def test_elr_fp32_matches_reference(kernel_device, b, k, scale):
    logits, labels, targets, index = _elr_inputs(b, k, kernel_device, scale=scale)
    ref_loss, ref_targets, ref_grad = _elr_run(elr_cross_entropy_reference, logits, labels, targets, index)
    if scale > 10:  # the clamp must be active on both sides for this case to test its zero gradient
        p = torch.softmax(logits.detach(), 1)
        assert (p < 1e-4).any() and (p > 1 - 1e-4).any()
    untouched = torch.ones(targets.shape[0], dtype=torch.bool, device=kernel_device)
    untouched[index] = False
    for impl in _elr_impls(kernel_device):
        loss, new_targets, grad = _elr_run(impl, logits, labels, targets, index)
        assert_close_fp32(loss, ref_loss, f"{impl.__name__} loss")
        assert_close_fp32(new_targets, ref_targets, f"{impl.__name__} targets", rtol=2e-6)
        assert torch.equal(new_targets[untouched], targets[untouched]), "rows outside the batch changed"
        assert_close_fp32(grad, ref_grad, f"{impl.__name__} grad logits")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,k", [(1, 7), (37, 8)])
def test_elr_low_precision_logits(kernel_device, dtype, b, k):
    logits, labels, targets, index = _elr_inputs(b, k, kernel_device, dtype)
    exact_logits = logits.detach().double().requires_grad_()
    exact_loss, exact_targets, exact_grad = _elr_run(elr_cross_entropy_reference, exact_logits, labels,
                                                     targets.double(), index)
    ref_loss, ref_targets, ref_grad = _elr_run(elr_cross_entropy_reference, logits, labels, targets, index)
    for impl in _elr_impls(kernel_device):
        loss, new_targets, grad = _elr_run(impl, logits, labels, targets, index)
        assert loss.dtype == ref_loss.dtype and grad.dtype == dtype
        assert_within_twice_reference_error(loss, ref_loss, exact_loss, f"{impl.__name__} loss")
        assert_within_twice_reference_error(new_targets, ref_targets, exact_targets, f"{impl.__name__} targets")
        assert_within_twice_reference_error(grad, ref_grad, exact_grad, f"{impl.__name__} grad logits")


# ----------------------------------------------------------------------------------------------------------
# Registered ops: backend choice, op checks, torch.compile
# ----------------------------------------------------------------------------------------------------------


def test_backend_choice(monkeypatch):
    calls = []
    monkeypatch.setattr(smc_module, "split_merge_consistency_reference",
                        lambda *args: calls.append("smc") or torch.zeros(()))
    monkeypatch.setattr(elr_module, "elr_cross_entropy_reference", lambda *args: calls.append("elr") or torch.zeros(()))
    feat_org, feat_pieces, weight = torch.randn(2, 4, 3, 4), torch.randn(4, 4, 3, 2), torch.randn(7, 4)
    logits, labels, targets, index = _elr_inputs(2, 7, "cpu")
    assert get_kernel_backend() == "fused"
    with kernel_backend("reference"):
        split_merge_consistency(feat_org, feat_pieces, weight, (1, 2))
        elr_cross_entropy(logits, labels, targets, index, 0.7, 3.0)
    assert calls == ["smc", "elr"] and get_kernel_backend() == "fused"
    with pytest.raises(ValueError, match="unknown kernel backend 'triton'"):
        set_kernel_backend("triton")


def test_registered_ops_pass_opcheck():
    """Schema, fake (meta) kernels, autograd registration and AOT tracing with dynamic shapes, on the CPU."""
    grid = (2, 2)
    feat_org, feat_pieces, weight = _consistency_inputs(grid, 2, 5, 3, (3, 3), (2, 2), "cpu")
    torch.library.opcheck(torch.ops.smec_fast.split_merge_consistency.default, (feat_org, feat_pieces, weight, 2, 2))
    _, diff = torch.ops.smec_fast.split_merge_consistency(feat_org, feat_pieces, weight, 2, 2)
    torch.library.opcheck(torch.ops.smec_fast.split_merge_consistency_backward.default,
                          (torch.tensor(1.5), diff.detach(), feat_org.detach(), feat_pieces.detach(), weight.detach(),
                           2, 2, True))
    logits, labels, targets, index = _elr_inputs(4, 7, "cpu")
    # The mutating op has no autograd formula of its own (torch.library allows none on a mutating op): its
    # autograd is the Function pairing it with the backward op, so it is checked without requires_grad.
    torch.library.opcheck(torch.ops.smec_fast.elr_cross_entropy.default,
                          (logits.detach(), labels, targets, index, 0.7, 3.0))
    _, updated = torch.ops.smec_fast.elr_cross_entropy(logits.detach(), labels, targets, index, 0.7, 3.0)
    torch.library.opcheck(torch.ops.smec_fast.elr_cross_entropy_backward.default,
                          (torch.tensor(0.5), logits.detach(), labels, updated, 3.0))


@pytest.mark.xdist_group("compile")  # with the other tests that compile: inductor starts once per worker
def test_torch_compile_fullgraph_traces_both_ops(kernel_device):
    """One compiled function calling both public ops (fused backend) matches the eager references."""
    grid = (1, 2)
    feat_org, feat_pieces, weight = _consistency_inputs(grid, 2, 16, 7, (7, 7), (7, 4), kernel_device)
    logits, labels, targets, index = _elr_inputs(4, 7, kernel_device)

    def objective(fo, fp, w, z, y, t, i):
        return elr_cross_entropy(z, y, t, i, 0.7, 3.0) + 2.0 * split_merge_consistency(fo, fp, w, grid, False)

    leaves = [feat_org, feat_pieces, weight, logits]
    ref_targets = targets.clone()
    with kernel_backend("reference"):
        ref = objective(feat_org, feat_pieces, weight, logits, labels, ref_targets, index)
    ref_grads = torch.autograd.grad(ref, leaves)
    compiled = torch.compile(objective, fullgraph=True)
    with kernel_backend("fused"):
        out = compiled(feat_org, feat_pieces, weight, logits, labels, targets, index)
    grads = torch.autograd.grad(out, leaves)
    assert_close_fp32(out.detach(), ref.detach(), "loss")
    assert_close_fp32(targets, ref_targets, "targets", rtol=2e-6)
    for name, got, want in zip(("feat_org", "feat_pieces", "weight", "logits"), grads, ref_grads):
        assert_close_fp32(got, want, f"grad {name}")


# ----------------------------------------------------------------------------------------------------------
# The compiled path, without a GPU
# ----------------------------------------------------------------------------------------------------------

# Compiles one launch of every kernel (bf16 inputs, resize and weight gradient on) for each CUDA
# architecture named on the command line with Triton's real compiler, down to a CUDA binary (ptxas), in a
# process without the interpreter. The launches go through the host launchers, with Triton's driver replaced
# by one that names the target (one device index per architecture, so each gets its own kernel cache) and
# launches nothing. Exit code 3: this Triton's internals differ from what the stand-in driver needs.
_COMPILE_ONLY = r'''
import importlib, sys
import torch
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    class TargetOnlyDriver:
        arch = 80

        def get_current_target(self):
            return GPUTarget("cuda", self.arch, 32)

        def get_current_device(self):
            return self.arch

        def get_current_stream(self, device=None):
            return 0

    driver = TargetOnlyDriver()
    triton.runtime.driver.set_active(driver)
    run = JITFunction.run
    compiled = []

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((driver.arch, self.fn.__name__, len(kernel.asm["cubin"])))
        return kernel

    JITFunction.run = compile_only
except Exception as error:
    print("stand-in driver unavailable:", repr(error))
    sys.exit(3)
smc = importlib.import_module("smec_fast.kernels.split_merge_consistency")
elr = importlib.import_module("smec_fast.kernels.elr_cross_entropy")
fo, fp, w = torch.randn(3, 64, 7, 7).bfloat16(), torch.randn(6, 64, 7, 4).bfloat16(), torch.randn(7, 64)
z, y, t, i = torch.randn(5, 7).bfloat16(), torch.zeros(5, dtype=torch.long), torch.rand(9, 7), torch.arange(5)
for arch in sys.argv[1:]:
    driver.arch = int(arch)
    loss, diff = smc._split_merge_consistency_forward(fo, fp, w, 1, 2, traceable=False)
    smc._split_merge_consistency_backward(loss, diff, fo, fp, w, 1, 2, True, traceable=False)
    loss, updated = elr._elr_cross_entropy_forward(z, y, t, i, 0.7, 3.0, traceable=False)
    elr._elr_cross_entropy_backward(loss, z, y, updated, 3.0, traceable=False)
assert len(compiled) == 5 * (len(sys.argv) - 1) and all(size > 0 for *_, size in compiled), compiled
print(sorted(f"sm_{arch} {name}" for arch, name, _ in compiled))
'''


def test_kernels_compile_for_cuda_without_a_gpu(kernel_device):
    """Ampere (sm_80, the paper's RTX 3090 class) and Hopper (sm_90): the interpreter accepts code that the
    compiler rejects (e.g. a variable given different types in two branches), so the CPU suite also compiles
    the kernels."""
    if kernel_device.type == "cuda":
        pytest.skip("on a CUDA device every other test here runs the compiled kernels")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_ONLY, "80", "90"], env=env, capture_output=True,
                            text=True, timeout=600)
    if result.returncode == 3:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "sm_80 _split_merge_consistency_bwd_kernel" in result.stdout
    assert "sm_90 _split_merge_consistency_bwd_kernel" in result.stdout
