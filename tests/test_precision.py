"""Precision and layout: what `--amp` and `--channels-last` choose, and bf16 training on the CPU."""

import copy
import math

import pytest
import torch

from smec_fast import precision
from smec_fast.config import resolve_config
from smec_fast.errors import ConfigError
from smec_fast.losses import ElrCrossEntropy, SplitMergeConsistency
from smec_fast.methods import SmecMethod
from smec_fast.model import FerResNet18
from smec_fast.precision import cpu_bf16_support, resolve_precision
from smec_fast.trainer import train

TINY = dict(synthetic_train_size=160, synthetic_test_size=64, batch_size=32, epochs=3, progress=False,
            num_workers=0)


def _native(monkeypatch, present: bool, amx: bool = False):
    what = ("AMX and AVX512-BF16" if amx else "AVX512-BF16") if present else "no AMX or AVX512-BF16 (patched)"
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (present, what))
    monkeypatch.setattr(precision, "amx_in_use", lambda: present and amx)


def test_auto_follows_the_processor(monkeypatch):
    _native(monkeypatch, True)
    chosen = resolve_precision("auto", "auto", "cpu", narrowest_width=64)
    assert (chosen.amp, chosen.channels_last) == ("bf16", True) and "AVX512-BF16" in chosen.reason
    _native(monkeypatch, False)
    chosen = resolve_precision("auto", "auto", "cpu", narrowest_width=64)
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
    # ResNet-18 meets a one-pixel-wide map before layer4's stride-2 convolution at widths <= 16 px, and a
    # two-pixel-wide one (whose stride-2 output is one pixel wide) at widths <= 32 px.
    _native(monkeypatch, True)
    assert precision.narrowest_bf16_cpu_width() == 17
    assert resolve_precision("auto", "auto", "cpu", narrowest_width=17).amp == "bf16"
    narrow = resolve_precision("auto", "auto", "cpu", narrowest_width=16)
    assert (narrow.amp, narrow.channels_last) == ("off", False) and "16-px-wide" in narrow.reason
    with pytest.raises(ConfigError, match="--amp bf16 on the CPU: inputs 16 px wide"):
        resolve_precision("bf16", "auto", "cpu", narrowest_width=16)
    assert resolve_precision("bf16", "auto", "cuda", narrowest_width=8).amp == "bf16"
    _native(monkeypatch, True, amx=True)
    assert precision.narrowest_bf16_cpu_width() == 33
    assert resolve_precision("auto", "auto", "cpu", narrowest_width=33).amp == "bf16"
    assert resolve_precision("auto", "auto", "cpu", narrowest_width=32).amp == "off"
    with pytest.raises(ConfigError, match="32 px wide .* with AMX .*ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"):
        resolve_precision("bf16", "auto", "cpu", narrowest_width=32)


def test_amx_counts_only_where_onednn_may_use_it(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flag", lambda probe: probe == "_is_amx_tile_supported")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for cap, used in ((None, True), ("ALL", True), ("AVX512_CORE_AMX", True), ("avx512_core_bf16", False),
                      ("AVX2", False)):
        if cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert precision.amx_in_use() is used, cap
        assert precision.narrowest_bf16_cpu_width() == (33 if used else 17), cap
    monkeypatch.setattr(precision, "_cpu_flag", lambda probe: probe in ("_is_amx_tile_supported",
                                                                       "_is_avx512_bf16_supported"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert precision.cpu_bf16_support() == (True, "AVX512-BF16 (AMX unused: ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert precision.cpu_bf16_support() == (True, "AMX and AVX512-BF16")
    monkeypatch.setattr(precision, "_cpu_flag", lambda probe: False)
    assert not precision.amx_in_use()


def test_bf16_weight_gradients_are_right_at_the_narrowest_allowed_width():
    """At the narrowest width bf16 trains at on this CPU (17 px, SMEC's pieces of a 34 px image; 33 px with AMX),
    the features and every parameter gradient of a bf16 step are within bf16's rounding of the fp32 step's: the
    narrow-width rule leaves out no broken case on this CPU. (Eval-mode batch norm: batch statistics'
    cancellation would amplify bf16's rounding in every layer.)"""
    torch.manual_seed(0)
    model = FerResNet18(7).eval()
    x = torch.randn(16, 3, 34, precision.narrowest_bf16_cpu_width())
    grads, features = {}, {}
    for amp in ("off", "bf16"):
        model.zero_grad()
        with precision.autocast_context("cpu", amp):
            logits, feat = model(x)
        (logits.float().logsumexp(1).mean() + feat.float().pow(2).mean()).backward()
        grads[amp] = {n: p.grad.clone() for n, p in model.named_parameters()}
        features[amp] = feat.detach().float()
    error = (features["bf16"] - features["off"]).abs().max() / features["off"].abs().max()
    assert error < 0.1, error.item()  # AMX's broken forward, at 17-32 px: 1.2 to 3.3 or NaN
    for name, g in grads["off"].items():
        error = (grads["bf16"][name] - g).abs().max() / g.abs().max()
        # bf16 rounding: worst tensor 0.09-0.15 over three seeds at 17 and 24 px (AMD EPYC, torch 2.14.1);
        # the broken kernels, at 16 px (32 px with AMX), give 1 to 1e35 or NaN
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


def _smec_loss(model, images, labels, amp="off", channels_last=False) -> float:
    method = SmecMethod(labels.numel(), 7, 0.7, 3.0, (1, 2), 3.0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    with precision.autocast_context("cpu", amp):
        loss, _ = method(model, images, labels, torch.arange(labels.numel()))
    return loss.double().item()


def _rounding_draw(model, images, labels, seed: int) -> float:
    """The SMEC loss in float64 with every value bf16 autocast rounds (the image, conv and linear weights, each
    layer's output) multiplied by 1 + u * U(-1, 1), u = 2^-8 being bf16's unit roundoff."""
    generator = torch.Generator().manual_seed(seed)
    u = 2.0 ** -8

    def rounded(t):
        return t * (1 + u * (2 * torch.rand(t.shape, generator=generator, dtype=t.dtype) - 1))

    model = copy.deepcopy(model).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                for p in module.parameters():
                    p.copy_(rounded(p))
    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda module, args, out: rounded(out))
    return _smec_loss(model, rounded(images.double()), labels)


def test_bf16_loss_is_within_bf16_rounding_of_float64():
    """The SMEC loss of one training batch (train-mode batch norm, 32 px) under bf16 autocast with channels_last,
    against float64, on seeded random weights and images. The bound comes from bf16's rounding itself: 4
    standard deviations of the loss over 16 float64 evaluations in which every value autocast rounds is
    perturbed by bf16's unit roundoff. Whether bf16 is native (AMX, AVX512-BF16) or emulated (AVX2), oneDNN
    rounds to the same format, so the bound holds on every CPU kind. The images are twice the narrowest width
    bf16 trains at on this CPU (34 px, 66 px with AMX), so that SMEC's pieces reach no broken kernel. Measured,
    seeds 0-3: with AVX512-BF16 (and capped to AVX2) the bf16 error is 0.05 to 1.3 such deviations at 40 px and
    0.3 to 0.7 at 32 px; with AMX 0.13 to 0.87 at 66 px, and 0.01 to 0.61 at 34 px with oneDNN kept off AMX;
    fp32's below 2e-4 of one."""
    model = FerResNet18(7).train()
    side = 2 * precision.narrowest_bf16_cpu_width()  # SMEC's pieces as narrow as bf16 runs here
    images, labels = torch.randn(16, 3, side, side), torch.randint(0, 7, (16,))
    exact = _smec_loss(copy.deepcopy(model).double(), images.double(), labels)
    draws = [_rounding_draw(model, images, labels, s) - exact for s in range(16)]
    spread = math.sqrt(sum(d * d for d in draws) / len(draws))
    fp32 = _smec_loss(copy.deepcopy(model), images, labels) - exact
    bf16 = _smec_loss(copy.deepcopy(model), images, labels, "bf16", channels_last=True) - exact
    assert abs(bf16) <= 4 * spread, (bf16, spread)
    assert abs(fp32) <= spread * 2.0 ** -10, (fp32, spread)  # fp32 rounds 2^16 times finer than bf16


@pytest.mark.skipif(not cpu_bf16_support()[0], reason="checks the bf16 training that --amp auto picks on CPUs with "
                    "native bf16; this CPU would emulate it (4x slower than fp32) and trains in fp32 "
                    "(test_cpu_without_native_bf16_trains_in_fp32); bf16's rounding of a step is checked above")
def test_bf16_training_on_the_cpu_follows_fp32(tmp_path):
    """A few epochs of SMEC in bf16 autocast (channels_last) on the CPU learn as fp32's do. (Only the first step
    starts from the same weights; after it the two runs follow different trajectories, so the epochs' losses
    are compared by how far they fall, and one step's numerics by the test above.)"""
    # SMEC's pieces just wide enough for bf16 on this CPU: 36 px images, 68 px with AMX
    side = 2 * precision.narrowest_bf16_cpu_width() + 2
    small = {**TINY, "synthetic_train_size": 96, "synthetic_test_size": 32, "batch_size": 16, "image_size": side}
    runs = {amp: train(resolve_config(cli_values={**small, "amp": amp, "out": str(tmp_path / amp)}))
            for amp in ("off", "bf16")}
    assert runs["bf16"]["precision"] == {"amp": "bf16", "channels_last": True, "reason": "--amp bf16"}
    assert runs["off"]["precision"]["amp"] == "off" and not runs["off"]["precision"]["channels_last"]
    losses = {amp: [h["train"]["loss"] for h in run["history"]] for amp, run in runs.items()}
    drop = {amp: values[0] - values[-1] for amp, values in losses.items()}
    assert drop["off"] > 0.1 and drop["bf16"] > 0.5 * drop["off"], losses


def test_cpu_without_native_bf16_trains_in_fp32(tmp_path, monkeypatch):
    _native(monkeypatch, False)
    metrics = train(resolve_config(cli_values={**TINY, "image_size": 40, "epochs": 1, "out": str(tmp_path / "run")}))
    assert metrics["precision"] == {"amp": "off", "channels_last": False,
                                    "reason": "CPU with no AMX or AVX512-BF16 (patched)"}
