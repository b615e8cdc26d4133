import math

import pytest
import torch
from torch import nn

from smec_fast.augment import random_erasing
from smec_fast.config import resolve_config
from smec_fast.methods import (
    CrossEntropyMethod,
    EacMethod,
    ElrMethod,
    RulMethod,
    ScnMethod,
    SmecMethod,
    build_method,
)
from smec_fast.model import FerResNet18
from smec_fast.seeding import stream


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(4, 3, 32, 32), torch.randint(0, 7, (4,)), torch.tensor([3, 0, 7, 5])


def test_smec_loss_is_classification_plus_weighted_consistency(batch):
    model = FerResNet18(7)
    method = SmecMethod(10, 7, beta=0.7, lam=3.0, grid=(1, 2), lambda_con=3.0)
    loss, parts = method(model, *batch)
    torch.testing.assert_close(loss, parts["cls"] + 3.0 * parts["con"])
    assert parts["con"] > 0
    # the ELR targets of the batch's samples moved, the others did not
    touched = method.elr.targets.abs().sum(1) > 0
    assert touched.nonzero().flatten().tolist() == [0, 3, 5, 7]


def test_smec_with_plain_ce_ablation(batch):
    model = FerResNet18(7)
    method = SmecMethod(10, 7, beta=0.7, lam=3.0, grid=(2, 1), lambda_con=2.0, use_elr=False)
    loss, parts = method(model, *batch)
    logits, _ = model(batch[0])
    torch.testing.assert_close(parts["cls"], torch.nn.functional.cross_entropy(logits, batch[1]))
    assert method.elr is None


def test_consistency_warmup_ramps_lambda(batch):
    model = FerResNet18(7).eval()
    method = SmecMethod(10, 7, beta=0.7, lam=3.0, grid=(1, 2), lambda_con=2.0, warmup_epochs=2.0)
    for done, factor in ((0.0, 0.0), (0.5, 0.25), (2.0, 1.0), (5.0, 1.0)):
        method.set_progress(done)
        loss, parts = method(model, *batch)
        torch.testing.assert_close(loss, parts["cls"] + 2.0 * factor * parts["con"])
    no_warmup = SmecMethod(10, 7, beta=0.7, lam=3.0, grid=(1, 2), lambda_con=2.0)
    no_warmup.set_progress(0.0)
    assert no_warmup.con_ramp.item() == 1.0


def test_random_erasing_follows_its_distribution():
    images = torch.ones(4000, 2, 20, 30)
    erased = random_erasing(images, torch.Generator().manual_seed(0), p=0.5, scale=(0.02, 0.25), ratio=(0.3, 3.3))
    mask = erased[:, 0] == 0  # (B, H, W)
    assert torch.equal(mask, erased[:, 1] == 0)  # all channels erased together
    hit = mask.flatten(1).any(1)
    assert abs(hit.float().mean().item() - 0.5) < 0.03
    for m in mask[hit][:300]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        h, w = rows.numel(), cols.numel()
        assert m.sum() == h * w and rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        # area from scale (rounding can move a side by half a pixel), clipped to the image
        assert 0.02 * 600 * 0.5 <= h * w <= 0.25 * 600 * 1.6
    assert not torch.equal(erased, random_erasing(images, torch.Generator().manual_seed(1)))
    torch.testing.assert_close(erased, random_erasing(images, torch.Generator().manual_seed(0)), rtol=0, atol=0)


def test_eac_is_ce_on_erased_images_plus_flip_consistency(batch):
    model = FerResNet18(7).eval()
    method = EacMethod(lambda_flip=5.0)
    method.start_epoch(3, seed=1)
    loss, parts = method(model, *batch)
    torch.testing.assert_close(loss, parts["ce"] + 5.0 * parts["flip"])
    erased = random_erasing(batch[0], stream("method", 1, 3, 1))
    logits, _ = model(erased)
    torch.testing.assert_close(parts["ce"], torch.nn.functional.cross_entropy(logits, batch[1]))


class FixedNet(nn.Module):
    """Returns given logits and features whatever the input, to check losses by hand."""

    def __init__(self, logits, feat):
        super().__init__()
        self.logits, self.feat = logits, feat
        self.fc = nn.Linear(feat.shape[1], logits.shape[1])
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.logits, self.feat

    @property
    def cam_weight(self):
        return self.fc.weight


def test_scn_rank_regularisation_and_relabelling_by_hand():
    b = 10
    logits = torch.full((b, 7), -5.0)
    logits[:, 2] = 5.0  # every sample confidently predicts class 2
    feat = torch.randn(b, 512, 2, 2)
    method = ScnMethod(torch.zeros(20, dtype=torch.long), beta=0.7, margin_rank=0.15, margin_relabel=0.2,
                       relabel_epoch=1)
    # importance alpha = sigmoid(v . f + c): fix the head so that alpha is known
    pooled = feat.mean((2, 3))
    with torch.no_grad():
        method.attention[0].weight.zero_()
        method.attention[0].bias.zero_()
    index = torch.arange(b)
    model = FixedNet(logits, feat)
    method.start_epoch(0, seed=0)
    loss, parts = method(model, torch.zeros(b, 3, 4, 4), None, index)
    method.end_step(index)
    # alpha = 0.5 for all: no gap between groups, L_RR = margin
    assert parts["rr"].item() == pytest.approx(0.15)
    torch.testing.assert_close(parts["ce"], torch.nn.functional.cross_entropy(0.5 * logits, torch.zeros(b).long()))
    assert method.labels.tolist() == [0] * 20  # epoch 0: no relabelling yet
    method.start_epoch(1, seed=0)
    with torch.no_grad():
        method.attention[0].weight.copy_(torch.linspace(-1, 1, 512)[None])
    alpha = torch.sigmoid(pooled @ torch.linspace(-1, 1, 512))
    loss, parts = method(model, torch.zeros(b, 3, 4, 4), None, index)
    assert method.labels.tolist() == [0] * 20  # written after the step's backward, by end_step
    method.end_step(index)
    low = alpha.argsort(descending=True)[7:]  # the 3 least important of 10 (beta = 0.7)
    expected = torch.zeros(20, dtype=torch.long)
    expected[low] = 2
    assert method.labels.tolist() == expected.tolist()
    assert parts["relabelled"].item() == pytest.approx(3 / 20)
    gap = alpha.sort(descending=True).values
    assert parts["rr"].item() == pytest.approx(max(0.0, 0.15 - (gap[:7].mean() - gap[7:].mean()).item()), abs=1e-6)


def test_rul_mixes_by_relative_confidence():
    b = 6
    feat = torch.randn(b, 512, 1, 1)
    model = FixedNet(torch.zeros(b, 7), feat)
    method = RulMethod()
    method.start_epoch(0, seed=4)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    loss, parts = method(model, torch.zeros(b, 3, 4, 4), labels, torch.arange(b))
    pair = torch.randperm(b, generator=stream("method", 4, 0, 2))
    f = feat.flatten(1)
    c = method.uncertainty(f).squeeze(1) + 1e-6
    w = c / (c + c[pair])
    z = model.fc(w[:, None] * f + (1 - w[:, None]) * f[pair])
    ce = torch.nn.functional.cross_entropy
    expected = (w * ce(z, labels, reduction="none") + (1 - w) * ce(z, labels[pair], reduction="none")).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert method.uncertainty[0].weight.grad.abs().sum() > 0


def test_build_method_resolves_options():
    labels = torch.zeros(10, dtype=torch.long)
    smec = build_method(resolve_config(cli_values={"noise_rate": 0.5}), labels, 7, noise_rate=0.5)
    assert isinstance(smec, SmecMethod) and smec.lambda_con == 5.0
    assert build_method(resolve_config(cli_values={"lambda_con": 0.5}), labels, 7, 0.0).lambda_con == 0.5
    for name, kind in (("ce", CrossEntropyMethod), ("elr", ElrMethod), ("eac", EacMethod), ("scn", ScnMethod),
                       ("rul", RulMethod)):
        assert isinstance(build_method(resolve_config(cli_values={"method": name}), labels, 7, 0.0), kind)
    assert math.isclose(build_method(resolve_config(cli_values={"method": "eac"}), labels, 7, 0.0).lambda_flip, 5.0)


def test_smec_pieces_can_leave_batch_norm_statistics_alone():
    """--piece-bn-stats false: the step's loss and gradients are unchanged (training-mode batch norm uses
    batch statistics), and the running statistics are those of the original images' forward alone."""
    import copy

    torch.manual_seed(0)
    images, labels, index = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.arange(4)
    model = FerResNet18(7)
    results = {}
    for update in (True, False):
        cfg = resolve_config(cli_values={"method": "smec", "piece_bn_stats": update})
        m, method = copy.deepcopy(model), build_method(cfg, torch.zeros(4, dtype=torch.long), 7, 0.0)
        loss, _ = method(m, images, labels, index)
        loss.backward()
        results[update] = loss.detach(), [p.grad for p in m.parameters()], dict(m.named_buffers())
    alone = copy.deepcopy(model)
    alone(images)
    torch.testing.assert_close(results[False][0], results[True][0], rtol=1e-6, atol=0)
    for a, b in zip(results[False][1], results[True][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for name, buffer in alone.named_buffers():
        assert torch.equal(results[False][2][name], buffer), name
    assert not torch.equal(results[True][2]["bn1.running_mean"], alone.bn1.running_mean)


# --- the registry: a method is one class ------------------------------------------------------------------------


def test_a_new_method_is_one_registered_class(tmp_path):
    """A method declared and registered in one class trains through config, recipe, sweep parsing and trainer,
    with no other file touched."""
    from smec_fast.methods import TrainingMethod, base, method_names, register
    from smec_fast.sweeps import parse_variants
    from smec_fast.trainer import train

    @register
    class SmoothedCrossEntropy(TrainingMethod):
        name = "ce-smooth"
        official_recipe = {"lr": 5e-4}

        def forward(self, model, images, labels, index):
            logits, _ = model(images)
            loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=0.1)
            return loss, {"ce": loss.detach()}

    try:
        assert method_names()[-1] == "ce-smooth"
        assert parse_variants("ce-smooth:recipe=official")[0].method == "ce-smooth"
        cfg = resolve_config(cli_values={"method": "ce-smooth", "recipe": "official", "image_size": 32, "epochs": 1,
                                         "synthetic_train_size": 64, "synthetic_test_size": 32, "batch_size": 16,
                                         "progress": False, "num_workers": 0, "out": str(tmp_path / "run")})
        assert cfg.lr == 5e-4  # its own official recipe
        metrics = train(cfg)
        assert metrics["method"] == "ce-smooth" and metrics["lambda_con"] is None
        assert set(metrics["history"][0]["train"]) == {"loss", "ce"}
    finally:
        del base._REGISTRY["ce-smooth"]
    with pytest.raises(ValueError, match="a name of its own"):
        register(type("Again", (CrossEntropyMethod,), {}))  # "ce" is taken
    with pytest.raises(ValueError, match="uses CAMs, which only a pooled head has"):
        register(type("CamOnEmbedding", (RulMethod,), {"name": "rul-cam", "uses_cam": True}))
    assert "rul-cam" not in method_names()


def test_options_given_for_another_method_are_warned_of(caplog):
    from smec_fast.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--method", "ce", "--eac-lambda", "3", "--grid", "2x2", "--lr", "1e-3"])
    with caplog.at_level("WARNING"):
        cfg = config_from_args(args)
    assert cfg.eac_lambda == 3.0  # kept, as given
    assert "--eac-lambda is read by eac only; --method ce ignores it" in caplog.text
    assert "--grid is read by smec only" in caplog.text and "--lr" not in caplog.text


@pytest.mark.parametrize("module", ["trainer", "inference", "cli", "sweeps", "api", "media", "scoring"])
def test_only_the_methods_modules_name_a_method(module):
    """The trainer, inference, CLI and sweeps read what a method declares; none of them names one."""
    import ast
    import importlib
    from pathlib import Path

    from smec_fast.methods import method_names

    source = Path(importlib.import_module(f"smec_fast.{module}").__file__).read_text(encoding="utf-8")
    strings = {node.value for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not strings & set(method_names())
