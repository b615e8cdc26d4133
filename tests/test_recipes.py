"""`--recipe official`: each baseline as its authors' released code trains it (each method class's
official_recipe, smec_fast.methods)."""

import csv
import json

import pytest
import torch
from torch import nn

from smec_fast.augment import flip_or_noise_choice, gaussian_pixel_noise, random_erasing
from smec_fast.config import describe_recipe, resolve_config
from smec_fast.data import synthetic_split
from smec_fast.data.images import IMAGENET_MEAN, IMAGENET_STD
from smec_fast.data.loaders import make_loader
from smec_fast.errors import CheckpointError, ConfigError
from smec_fast.methods import (EacMethod, PixelNoise, RulMethod, ScnMethod, basic_augmentation, official_recipes)
from smec_fast.model import EmbeddingResNet18, FerResNet18, build_model, feature_map_size
from smec_fast.seeding import stream
from smec_fast.trainer import train

# Under pytest-xdist these tests run in one worker: they share the official runs.
pytestmark = pytest.mark.xdist_group("recipes")

CE = nn.functional.cross_entropy


def grey(images: torch.Tensor) -> torch.Tensor:
    """Normalised images back to grey levels 0..255."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean) * 255.0


def normalised(levels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (levels / 255.0 - mean) / std


# --- configuration ---------------------------------------------------------------------------------------------


RECIPES = official_recipes()


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_official_recipe_sets_the_released_codes_values_and_the_command_line_wins(method):
    cfg = resolve_config(cli_values={"method": method, "recipe": "official", "dataset": "folder", "data": "x"})
    for key, value in RECIPES[method].items():
        assert getattr(cfg, key) == value, key
    assert cfg.lr_decay == 0.9
    shared = resolve_config(cli_values={"method": method, "dataset": "folder", "data": "x"})
    assert (shared.lr, shared.lr_decay, shared.batch_size) == (1e-4, 1.0, 64)  # the paper's recipe for all
    mine = resolve_config(file_values={"lr": 5e-5}, cli_values={"method": method, "recipe": "official",
                                                                 "dataset": "folder", "data": "x", "epochs": 10})
    assert mine.lr == 5e-5 and mine.epochs == 10 and mine.lr_decay == 0.9
    assert "overridden" in describe_recipe(mine) and "overridden" not in describe_recipe(cfg)


def test_recipe_values_per_method():
    eac, scn, rul = (resolve_config(cli_values={"method": m, "recipe": "official"}) for m in ("eac", "scn", "rul"))
    assert (eac.epochs, eac.lr, eac.batch_size, eac.eac_lambda) == (60, 2e-4, 32, 5.0)
    # SCN's src/train.py trains 70 epochs, the others' code 60
    assert (scn.epochs, scn.lr, scn.batch_size, scn.scn_margin_rank, scn.scn_relabel_epoch) == (70, 1e-3, 64, 0.07, 9)
    assert (rul.epochs, rul.lr, rul.batch_size) == (60, 2e-4, 64)
    assert describe_recipe(scn).startswith("official (SCN's released code): epochs 70, lr 0.001")
    assert describe_recipe(resolve_config(cli_values={"method": "scn", "epochs": 12})).startswith("shared: epochs 12,")
    smec = resolve_config(cli_values={"method": "smec", "recipe": "official"})
    assert smec.lr == resolve_config(cli_values={"method": "smec"}).lr  # SMEC's own recipe is the shared one
    with pytest.raises(ConfigError, match="--recipe must be one of shared, official"):
        resolve_config(cli_values={"recipe": "authors"})


# --- augmentation ----------------------------------------------------------------------------------------------


def test_gaussian_pixel_noise_has_variance_30_grey_levels_and_stays_in_range():
    torch.manual_seed(0)
    levels = torch.full((64, 3, 16, 16), 128.0)
    levels[32:] = 254.0  # near white: clipped at 255
    images = normalised(levels)
    which = torch.arange(64) % 4 != 0
    noisy = grey(gaussian_pixel_noise(images, which, torch.Generator().manual_seed(1)))
    diff = noisy - levels
    assert diff[~which].abs().max() < 1e-3  # images not chosen are untouched
    grey_mid = diff[:32][which[:32]]
    assert grey_mid.std().item() == pytest.approx(30 ** 0.5, rel=0.03)
    assert grey_mid.mean().abs().item() < 0.1
    assert noisy.max() <= 255.0 + 1e-3 and noisy.min() >= -1e-3
    assert (noisy[32:][which[32:]] > 255.0 - 1e-3).float().mean() > 0.3  # the clip at white bites


def test_flip_or_noise_choice_is_a_quarter_each_never_both_and_shards_agree():
    flip, noise = flip_or_noise_choice(20000, torch.Generator().manual_seed(0))
    assert not (flip & noise).any()
    assert flip.float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert noise.float().mean().item() == pytest.approx(0.25, abs=0.01)
    whole = flip_or_noise_choice(12, torch.Generator().manual_seed(5))
    shards = [flip_or_noise_choice(4, torch.Generator().manual_seed(5), shard=(k, 3)) for k in range(3)]
    for part, full in enumerate(whole):
        assert torch.equal(torch.stack([s[part] for s in shards], 1).flatten(), full)


def test_loader_without_flips_keeps_the_order_and_mirrors_nothing():
    split = synthetic_split("train", 48, 24, seed=0)
    flipping = make_loader("torch", split, 24, 16, "cpu", train=True, seed=2)
    plain = make_loader("torch", split, 24, 16, "cpu", train=True, seed=2, hflip=False)
    reference = make_loader("torch", split, 24, 48, "cpu", train=False)
    every = next(iter(reference))[0]
    mirrored = 0
    for (a, _, ia), (b, _, ib) in zip(flipping, plain):
        assert torch.equal(ia, ib)
        assert torch.equal(b, every[ib])
        mirrored += int(sum(not torch.equal(x, y) for x, y in zip(a, b)))
    assert mirrored > 0  # the flipping loader did mirror some of the same images


# --- EAC -------------------------------------------------------------------------------------------------------


def _eac_views(official: bool, noisy: bool, n: int = 400):
    torch.manual_seed(0)
    images = normalised(torch.randint(20, 236, (n, 3, 12, 12)).float())  # away from 0 and 255: no clipping
    method = EacMethod(official=official, noisy_labels=noisy)
    method.start_epoch(2, seed=7)
    return images, method, *method.views(images)


def test_eac_official_noisy_path_erases_the_two_views_independently():
    images, method, main, flipped = _eac_views(official=True, noisy=True)
    assert not method.loader_hflip
    mirrored = images.flip(-1)
    flip_erased = (flipped == 0).all(1)  # (B, H, W): the erased pixels are the mean colour, 0
    # the flipped view is the mirror of the image before noise and erasing, wherever it is not erased
    assert torch.equal(flipped.masked_fill(flip_erased[:, None], 0), mirrored.masked_fill(flip_erased[:, None], 0))
    main_erased = (main == 0).all(1)
    same_mask = (main_erased == flip_erased.flip(-1)).flatten(1).all(1)
    any_erased = main_erased.flatten(1).any(1) | flip_erased.flatten(1).any(1)
    # independent draws: about half of each view is erased, and the two masks seldom coincide
    for mask in (main_erased, flip_erased):
        assert 0.4 < mask.flatten(1).any(1).float().mean() < 0.6
    assert (same_mask & any_erased).float().mean() < 0.02
    # the main view has Gaussian noise on about half the images, outside its erased area
    touched = ((main - images).abs() > 1e-6) & ~main_erased[:, None]
    noised = touched.flatten(1).any(1)
    assert 0.4 < noised.float().mean() < 0.6
    spread = grey(main)[noised] - grey(images)[noised]
    keep = ~main_erased[noised][:, None].expand_as(spread)
    assert spread[keep].std().item() == pytest.approx(30 ** 0.5, rel=0.03)


def test_eac_official_clean_path_flips_the_noised_erased_view():
    images, method, main, flipped = _eac_views(official=True, noisy=False)
    assert torch.equal(flipped, main.flip(-1))
    assert ((main - images).abs() > 1e-6).flatten(1).any(1).float().mean() > 0.5  # noise or erasing on most


def test_eac_shared_recipe_is_unchanged():
    images, method, main, flipped = _eac_views(official=False, noisy=True, n=16)
    assert method.loader_hflip
    assert torch.equal(main, random_erasing(images, stream("method", 7, 2, 1)))
    assert torch.equal(flipped, main.flip(-1))


def test_eac_official_loss_uses_the_views(monkeypatch):
    torch.manual_seed(1)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 7, (4,))
    model = FerResNet18(7).eval()
    method = EacMethod(official=True, noisy_labels=True)
    method.start_epoch(0, seed=3)
    loss, parts = method(model, images, labels, torch.arange(4))
    method.start_epoch(0, seed=3)
    main, _ = method.views(images)
    torch.testing.assert_close(parts["ce"], CE(model(main)[0], labels))
    torch.testing.assert_close(loss, parts["ce"] + 5.0 * parts["flip"])


# --- SCN -------------------------------------------------------------------------------------------------------


class FixedNet(nn.Module):
    """Returns given logits and features whatever the input, to check losses by hand."""

    def __init__(self, logits, feat):
        super().__init__()
        self.logits, self.feat = logits, feat

    def forward(self, x):
        return self.logits, self.feat


def _scn(official: bool, n: int = 20):
    return ScnMethod(torch.zeros(n, dtype=torch.long), beta=0.75, margin_rank=0.07, margin_relabel=0.2,
                     relabel_epoch=9, official=official)


def test_scn_official_relabels_the_whole_batch_by_the_weighted_outputs_from_epoch_9():
    b = 8
    # class 2 leads class 0 (the label) by 1.2 in the logits: with alpha = 0.5 the weighted logits lead by 0.6,
    # p(2) - p(0) = 0.15 < 0.2 (kept); unweighted it is 0.54 > 0.2 (relabelled by the shared rule)
    logits = torch.zeros(b, 7)
    logits[:, 2] = 1.2
    logits[:4, 2] = 3.0  # the first four lead by 3.0: weighted 1.5, p(2) - p(0) = 0.44 (relabelled)
    model = FixedNet(logits, torch.zeros(b, 512, 2, 2))
    index = torch.arange(b)
    method = _scn(official=True)
    with torch.no_grad():
        method.attention[0].weight.zero_()
        method.attention[0].bias.zero_()  # alpha = sigmoid(0) = 0.5 for every sample
    method.start_epoch(8, seed=0)  # the 9th epoch counted from 1: no relabelling yet
    method(model, torch.zeros(b, 3, 8, 8), None, index)
    method.end_step(index)
    assert method.labels.tolist() == [0] * 20
    method.start_epoch(9, seed=0)
    _, parts = method(model, torch.zeros(b, 3, 8, 8), None, index)
    method.end_step(index)
    assert method.labels.tolist() == [2] * 4 + [0] * 16  # high and low importance alike (all alpha equal)
    assert parts["relabelled"].item() == pytest.approx(4 / 20)
    probs = torch.softmax(0.5 * logits, 1)
    assert (probs[:4, 2] - probs[:4, 0] > 0.2).all() and (probs[4:, 2] - probs[4:, 0] < 0.2).all()
    torch.testing.assert_close(parts["ce"], CE(0.5 * logits, torch.zeros(b, dtype=torch.long)))


def test_scn_official_steps_read_the_labels_of_the_epochs_start():
    b = 4
    logits = torch.zeros(b, 7)
    logits[:, 3] = 10.0
    model = FixedNet(logits, torch.zeros(b, 512, 1, 1))
    method = _scn(official=True, n=b)
    method.start_epoch(9, seed=0)
    index = torch.arange(b)
    _, first = method(model, torch.zeros(b, 3, 8, 8), None, index)
    method.end_step(index)
    assert method.labels.tolist() == [3] * b
    _, again = method(model, torch.zeros(b, 3, 8, 8), None, index)  # same epoch: still the old labels
    torch.testing.assert_close(again["ce"], first["ce"])
    method.start_epoch(10, seed=0)
    _, later = method(model, torch.zeros(b, 3, 8, 8), None, index)
    assert later["ce"] < first["ce"] - 1.0  # the new labels, from the next epoch on


def test_scn_shared_relabels_only_the_low_group_by_unweighted_outputs():
    b = 8
    logits = torch.zeros(b, 7)
    logits[:, 2] = 1.2  # unweighted lead 0.54 > 0.2 for everyone; only the low group may change
    feat = torch.zeros(b, 512, 1, 1)
    feat[:, 0, 0, 0] = torch.arange(b, dtype=torch.float32)  # importance rises with the position
    method = _scn(official=False)
    with torch.no_grad():
        method.attention[0].weight.zero_()
        method.attention[0].weight[0, 0] = 1.0
    method.start_epoch(9, seed=0)
    index = torch.arange(b)
    method(FixedNet(logits, feat), torch.zeros(b, 3, 8, 8), None, index)
    method.end_step(index)
    assert method.labels[:b].tolist() == [2, 2] + [0] * 6  # the 2 of 8 outside round(0.75 * 8) = 6


@pytest.mark.parametrize("official", [False, True])
def test_scn_counts_the_epochs_relabelling_against_the_clean_labels(official):
    clean = torch.tensor([2, 2, 2, 2, 0, 0, 0, 0])
    noisy = torch.tensor([0, 0, 2, 2, 0, 0, 0, 0])  # samples 0 and 1 carry a wrong label
    logits = torch.zeros(8, 7)
    logits[:6, 2] = 10.0  # the model says class 2 for samples 0-5: it restores 0 and 1 and overwrites 4 and 5
    feat = torch.zeros(8, 512, 1, 1)
    feat[6:, 0] = 5.0  # samples 6 and 7 most important: the high group of round(0.25 * 8) = 2, the rest low
    method = ScnMethod(noisy, beta=0.25, relabel_epoch=0, official=official, clean_labels=clean)
    with torch.no_grad():
        method.attention[0].weight.zero_()
        method.attention[0].weight[0, 0] = 1.0
        method.attention[0].bias.zero_()
    method.start_epoch(0, seed=0)
    assert method.epoch_stats() == {"relabel_changed": 0, "relabel_restored": 0, "relabel_overwrote": 0,
                                    "labels_wrong": pytest.approx(2 / 8)}
    index = torch.arange(8)
    method(FixedNet(logits, feat), torch.zeros(8, 3, 8, 8), None, index)
    method.end_step(index)
    assert method.labels.tolist() == [2, 2, 2, 2, 2, 2, 0, 0]
    assert method.epoch_stats() == {"relabel_changed": 4, "relabel_restored": 2, "relabel_overwrote": 2,
                                    "labels_wrong": pytest.approx(2 / 8)}
    method.start_epoch(1, seed=0)  # the next epoch counts its own changes
    assert method.epoch_stats()["relabel_changed"] == 0
    without = ScnMethod(noisy, relabel_epoch=0, official=official)
    without.start_epoch(0, seed=0)
    assert without.epoch_stats() == {"relabel_changed": 0}


def test_scn_high_group_is_truncated_officially_and_rounded_otherwise():
    # beta = 0.75 of 10: int() gives 7, round() 8
    assert _scn(official=True).high_group_size(10) == 7
    assert _scn(official=False).high_group_size(10) == 8


# --- RUL -------------------------------------------------------------------------------------------------------


def test_rul_official_heads_have_the_released_shapes():
    assert [feature_map_size(s) for s in (224, 112, 96, 64, 32)] == [7, 4, 3, 2, 1]
    model = build_model("embedding", 7, 96)
    assert isinstance(model, EmbeddingResNet18) and not model.has_cam
    bn2d, drop, flat, linear, bn1d = model.embedding
    assert isinstance(bn2d, nn.BatchNorm2d) and not bn2d.affine and bn2d.eps == 2e-5
    assert isinstance(drop, nn.Dropout) and drop.p == 0.4 and isinstance(flat, nn.Flatten)
    assert (linear.in_features, linear.out_features) == (512 * 3 * 3, 64)
    assert isinstance(bn1d, nn.BatchNorm1d) and bn1d.affine and bn1d.eps == 2e-5
    assert (model.fc.in_features, model.fc.out_features) == (64, 7)
    method = RulMethod(official=True, image_size=96)
    assert [type(m) for m in method.uncertainty] == [type(m) for m in model.embedding]
    assert method.uncertainty[3].in_features == 512 * 3 * 3
    logits, feat = model.eval()(torch.randn(2, 3, 96, 96))
    assert logits.shape == (2, 7) and feat.shape == (2, 512, 3, 3)
    with pytest.raises(CheckpointError, match="no class activation map"):
        model.cam_weight
    assert type(build_model(RulMethod.head("shared"), 7, 96)) is FerResNet18


def test_rul_official_add_up_loss_weights_the_labels_half_and_half():
    torch.manual_seed(0)
    b = 6
    model = build_model(RulMethod.head("official"), 7, 32).eval()  # eval: no dropout, running batch-norm statistics
    method = RulMethod(official=True, image_size=32).eval()
    images, labels = torch.randn(b, 3, 32, 32), torch.arange(b)
    method.start_epoch(1, seed=4)
    loss, parts = method(model, images, labels, torch.arange(b))
    noise = PixelNoise(stream=4)
    noise.start_epoch(4, 1)
    augmented = basic_augmentation(images, stream("method", 4, 1, 4), noise)
    feat = model.features(augmented)
    z = model.embedding(feat)
    u = method.uncertainty(feat).exp().mean(1)
    pair = torch.randperm(b, generator=stream("method", 4, 1, 2))
    w = u / (u + u[pair])
    logits = model.fc(w[:, None] * z + (u[pair] / (u + u[pair]))[:, None] * z[pair])
    torch.testing.assert_close(loss, 0.5 * CE(logits, labels) + 0.5 * CE(logits, labels[pair]))
    torch.testing.assert_close(parts["uncertainty"], u.mean())
    loss.backward()
    assert method.uncertainty[3].weight.grad.abs().sum() > 0  # the branch learns through the mixing weights


def test_rul_official_trains_the_classifier_at_ten_times_the_rate():
    model = build_model(RulMethod.head("official"), 7, 32)
    method = RulMethod(official=True, image_size=32)
    groups = method.param_groups(model, 2e-4)
    assert [g["lr"] for g in groups] == [2e-4, 2e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    everything = {id(p) for p in list(model.parameters()) + list(method.parameters())}
    assert {id(p) for g in groups for p in g["params"]} == everything
    assert sum(len(g["params"]) for g in groups) == len(everything)
    assert len(RulMethod().param_groups(FerResNet18(7), 1e-4)) == 1


# --- whole runs ------------------------------------------------------------------------------------------------


TINY = dict(image_size=32, synthetic_train_size=96, synthetic_test_size=32, batch_size=16, epochs=2,
            progress=False, num_workers=0, recipe="official", noise_rate=0.2)


@pytest.fixture(scope="session")
def official_runs(tmp_path_factory):
    """Two epochs of each baseline with its official recipe: (out folder, metrics, log text) by method."""
    import logging

    runs = {}
    for method in ("eac", "scn", "rul"):
        out = tmp_path_factory.mktemp("official") / method
        handler = logging.Handler()
        lines = []
        handler.emit = lambda record: lines.append(record.getMessage())
        logging.getLogger("smec_fast").addHandler(handler)
        level = logging.getLogger("smec_fast").level
        logging.getLogger("smec_fast").setLevel(logging.INFO)
        try:
            metrics = train(resolve_config(cli_values={**TINY, "method": method, "out": str(out)}))
        finally:
            logging.getLogger("smec_fast").removeHandler(handler)
            logging.getLogger("smec_fast").setLevel(level)
        runs[method] = out, metrics, "\n".join(lines)
    return runs


@pytest.mark.parametrize("method", ["eac", "scn", "rul"])
def test_official_runs_decay_the_learning_rate_per_epoch(official_runs, method):
    out, metrics, log_text = official_runs[method]
    recipe = RECIPES[method]
    lrs = [h["lr"] for h in metrics["history"]]
    assert lrs == pytest.approx([recipe["lr"], recipe["lr"] * 0.9], rel=1e-12)
    assert [float(r["lr"]) for r in csv.DictReader((out / "log.csv").open())] == pytest.approx(lrs)
    assert json.loads((out / "config.json").read_text())["recipe"] == "official"
    assert f"recipe: official ({method.upper()}'s released code)" in log_text
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    groups = checkpoint["optimizer"]["param_groups"]
    expected = [recipe["lr"] * 0.81] + ([recipe["lr"] * 10 * 0.81] if method == "rul" else [])
    assert [g["lr"] for g in groups] == pytest.approx(expected)


@pytest.mark.parametrize("recipe", ["shared", "official"])
def test_scn_run_reports_each_epochs_relabelling(tmp_path, recipe):
    """Through the trainer: the counts are in every epoch's row, and they add up. A label is wrong after an epoch
    when it was wrong before and not restored, or clean before and overwritten."""
    cfg = {**TINY, "method": "scn", "recipe": recipe, "epochs": 3, "scn_relabel_epoch": 1, "scn_margin_relabel": 0.0,
           "noise_rate": 0.4, "out": str(tmp_path / "scn")}
    metrics = train(resolve_config(cli_values=cfg))
    n = metrics["num_train"]
    rows = [h["train"] for h in metrics["history"]]
    assert rows[0]["relabel_changed"] == 0 and rows[0]["labels_wrong"] == pytest.approx(metrics["noise"]["changed"] / n)
    assert sum(r["relabel_changed"] for r in rows) > 0
    for before, after in zip(rows, rows[1:]):
        assert after["relabel_restored"] + after["relabel_overwrote"] <= after["relabel_changed"]
        wrong = round(before["labels_wrong"] * n) - after["relabel_restored"] + after["relabel_overwrote"]
        assert round(after["labels_wrong"] * n) == wrong
    state = torch.load(tmp_path / "scn" / "checkpoint.pt", weights_only=True)["method"]
    assert int((state["labels"] != state["given_labels"]).sum()) <= sum(r["relabel_changed"] for r in rows)
    header = next(csv.reader((tmp_path / "scn" / "log.csv").open()))
    assert {"train_relabel_changed", "train_relabel_restored", "train_relabel_overwrote",
            "train_labels_wrong"} <= set(header)


def test_official_rul_checkpoint_predicts_and_refuses_cams(official_runs, tmp_path):
    from PIL import Image

    from smec_fast.cli import main
    from smec_fast.inference import load_trained_model

    out = official_runs["rul"][0]
    trained = load_trained_model(out / "checkpoint.pt")
    assert isinstance(trained.model, EmbeddingResNet18)
    photo = tmp_path / "face.png"
    Image.fromarray((torch.rand(50, 40, 3) * 255).byte().numpy()).save(photo)
    assert main(["predict", str(out / "checkpoint.pt"), str(photo), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 1 and sum(float(rows[0][c]) for c in trained.class_names) == pytest.approx(1, abs=1e-4)
    assert main(["predict", str(out / "checkpoint.pt"), str(photo), "--cam", str(tmp_path / "cams")]) == 2
