"""Precision and layout: what `--amp` and `--channels-last` choose, and bf16 training on the CPU."""

import pytest
import torch

from smec_fast import precision
from smec_fast.config import resolve_config
from smec_fast.errors import ConfigError
from smec_fast.losses import ElrCrossEntropy, SplitMergeConsistency
from smec_fast.model import FerResNet18
from smec_fast.precision import resolve_precision
from smec_fast.trainer import train

TINY = dict(synthetic_train_size=160, synthetic_test_size=64, batch_size=32, epochs=3, progress=False,
            num_workers=0)


def _native(monkeypatch, present: bool):
    what = "AVX512-BF16" if present else "no AMX or AVX512-BF16 (patched)"
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (present, what))


def test_auto_follows_the_processor(monkeypatch):
    _native(monkeypatch, True)
    chosen = resolve_precision("auto", "auto", "cpu", narrowest_width=32)
    assert (chosen.amp, chosen.channels_last) == ("bf16", True) and "AVX512-BF16" in chosen.reason
    _native(monkeypatch, False)
    chosen = resolve_precision("auto", "auto", "cpu", narrowest_width=32)
    assert (chosen.amp, chosen.channels_last) == ("off", False) and "patched" in chosen.reason


def test_explicit_choices_and_cuda_defaults(monkeypatch):
    _native(monkeypatch, True)
    assert resolve_precision("off", "auto", "cpu").to_dict() == {
        "amp": "off", "channels_last": False, "reason": "--amp off"}
    assert resolve_precision("auto", "off", "cpu").channels_last is False
    assert resolve_precision("off", "on", "cpu").channels_last is True
    _native(monkeypatch, False)
    assert resolve_precision("bf16", "auto", "cpu").amp == "bf16"  # forced: emulated, but asked for
    cuda = resolve_precision("auto", "auto", "cuda")
    assert (cuda.amp, cuda.channels_last, cuda.reason) == ("bf16", True, "CUDA")
    assert resolve_precision("fp16", "off", "cuda").to_dict() == {
        "amp": "fp16", "channels_last": False, "reason": "--amp fp16, --channels-last off"}
    with pytest.raises(ConfigError, match="--amp fp16 needs a CUDA device"):
        resolve_precision("fp16", "auto", "cpu")


def test_narrow_inputs_keep_the_cpu_in_fp32(monkeypatch):
    # ResNet-18 meets a one-pixel-wide map before layer4's stride-2 convolution at widths <= 16 px.
    _native(monkeypatch, True)
    assert resolve_precision("auto", "auto", "cpu", narrowest_width=17).amp == "bf16"
    narrow = resolve_precision("auto", "auto", "cpu", narrowest_width=16)
    assert (narrow.amp, narrow.channels_last) == ("off", False) and "16-px-wide" in narrow.reason
    with pytest.raises(ConfigError, match="--amp bf16 on the CPU: inputs 16 px wide"):
        resolve_precision("bf16", "auto", "cpu", narrowest_width=16)
    assert resolve_precision("bf16", "auto", "cuda", narrowest_width=8).amp == "bf16"


def test_bf16_weight_gradients_are_right_at_the_narrowest_allowed_width():
    """At 17 px wide (SMEC's pieces of a 34 px image), every parameter gradient of a bf16 step is within
    bf16's rounding of the fp32 step's: the narrow-width rule leaves out no broken case on this CPU.
    (Eval-mode batch norm: batch statistics' cancellation would amplify bf16's rounding in every layer.)"""
    torch.manual_seed(0)
    model = FerResNet18(7).eval()
    x = torch.randn(16, 3, 34, precision.NARROWEST_BF16_CPU_WIDTH)
    grads = {}
    for amp in ("off", "bf16"):
        model.zero_grad()
        with precision.autocast_context("cpu", amp):
            logits, feat = model(x)
        (logits.float().logsumexp(1).mean() + feat.float().pow(2).mean()).backward()
        grads[amp] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, g in grads["off"].items():
        error = (grads["bf16"][name] - g).abs().max() / g.abs().max()
        # bf16 rounding: worst tensor 0.09-0.15 over three seeds at 17 and 24 px (AMD EPYC, torch 2.14.1);
        # the broken kernel, at 16 px, gives 1e7 to 1e35 or NaN
        assert error < 0.5, (name, error.item())


def test_losses_compute_in_fp32_under_autocast():
    """Under bf16 autocast the features arrive in bf16; L_con and CE + ELR still compute in fp32 (the CPU's
    autocast would run L_con's CAM contraction, an einsum, in bf16)."""
    torch.manual_seed(0)
    feat = torch.randn(4, 64, 4, 4).bfloat16()
    pieces = torch.randn(8, 64, 4, 2).bfloat16()
    weight = torch.randn(7, 64)
    consistency = SplitMergeConsistency((1, 2))
    expected = consistency(feat.float(), pieces.float(), weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = consistency(feat, pieces, weight)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)

    logits = torch.randn(4, 7).bfloat16()
    labels, index = torch.tensor([0, 3, 6, 2]), torch.tensor([1, 5, 2, 7])
    plain, mixed = ElrCrossEntropy(8, 7), ElrCrossEntropy(8, 7)
    expected = plain(logits.float(), labels, index)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mixed(logits, labels, index)
    assert got.dtype == torch.float32 and mixed.targets.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(mixed.targets, plain.targets, rtol=1e-6, atol=0)


def test_bf16_training_on_the_cpu_follows_fp32(tmp_path):
    """A few epochs of SMEC in bf16 autocast (channels_last) on the CPU: the loss falls as fp32's does."""
    runs = {amp: train(resolve_config(cli_values={**TINY, "image_size": 40, "amp": amp,
                                                  "out": str(tmp_path / amp)}))
            for amp in ("off", "bf16")}
    assert runs["bf16"]["precision"] == {"amp": "bf16", "channels_last": True, "reason": "--amp bf16"}
    assert runs["off"]["precision"]["amp"] == "off" and not runs["off"]["precision"]["channels_last"]
    losses = {amp: [h["train"]["loss"] for h in run["history"]] for amp, run in runs.items()}
    # the first epoch starts from the same weights; bf16 rounds the step, so it drifts a little after that
    assert losses["bf16"][0] == pytest.approx(losses["off"][0], rel=0.02), losses
    drop = {amp: values[0] - values[-1] for amp, values in losses.items()}
    assert drop["off"] > 0.1 and drop["bf16"] > 0.5 * drop["off"], losses


def test_cpu_without_native_bf16_trains_in_fp32(tmp_path, monkeypatch):
    _native(monkeypatch, False)
    metrics = train(resolve_config(cli_values={**TINY, "image_size": 40, "epochs": 1, "out": str(tmp_path / "run")}))
    assert metrics["precision"] == {"amp": "off", "channels_last": False,
                                    "reason": "CPU with no AMX or AVX512-BF16 (patched)"}
