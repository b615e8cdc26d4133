"""A run's network as a weight file (`smec-fast backbone`) and `--pretrained-head keep|drop|auto`."""

import json

import pytest
import torch

from smec_fast.cli import main
from smec_fast.config import resolve_config
from smec_fast.errors import CheckpointError
from smec_fast.model import FerResNet18, load_pretrained
from smec_fast.checkpoint import read_checkpoint
from smec_fast.trainer import train

# One worker under pytest-xdist: the backbone's training run is done once.
pytestmark = pytest.mark.xdist_group("backbone")

TINY = dict(image_size=40, synthetic_train_size=96, synthetic_test_size=32, batch_size=32, epochs=1,
            progress=False, num_workers=0, method="ce")
SYNTHETIC = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")


@pytest.fixture(scope="session")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone")
    train(resolve_config(cli_values={**TINY, "out": str(root / "source")}))
    code = main(["backbone", str(root / "source" / "checkpoint.pt"), "--out", str(root / "faces.pt")])
    assert code == 0
    return root


def test_backbone_file_and_card(backbone):
    card = json.loads((backbone / "faces.pt.json").read_text())
    assert card["method"] == "ce" and card["dataset"] == "synthetic" and card["image_size"] == 40
    assert card["epochs"] == 1 and card["class_names"] == list(SYNTHETIC) and card["classifier"] == "included"
    source = read_checkpoint(backbone / "source" / "checkpoint.pt")
    assert card["final_test_accuracy"] == source["history"][-1]["test"]["accuracy"]
    saved = torch.load(backbone / "faces.pt", weights_only=True)
    assert saved["card"] == card and saved["class_names"] == list(SYNTHETIC)
    for name, tensor in source["model"].items():
        assert torch.equal(saved["state_dict"][name], tensor), name


@pytest.mark.parametrize("head, names, kept", [
    ("auto", SYNTHETIC, True),  # same classes: the classifier is kept
    ("auto", tuple(reversed(SYNTHETIC)), False),  # other classes (or another order): dropped
    ("drop", SYNTHETIC, False),
    ("keep", SYNTHETIC, True),
])
def test_pretrained_head_choice(backbone, head, names, kept):
    source = torch.load(backbone / "faces.pt", weights_only=True)["state_dict"]
    torch.manual_seed(1)
    model = FerResNet18(7)
    fresh_fc = model.fc.weight.detach().clone()
    report = load_pretrained(model, backbone / "faces.pt", head, names)
    assert torch.equal(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])  # the backbone always loads
    if kept:
        assert torch.equal(model.fc.weight, source["fc.weight"])
    else:  # drawn afresh: neither the backbone's classifier nor the one the model was built with
        assert not torch.equal(model.fc.weight, source["fc.weight"]) and not torch.equal(model.fc.weight, fresh_fc)
        assert model.fc.weight.abs().max() <= fresh_fc.abs().max() * 1.01  # from the same initialiser's range
    assert (report.dropped == []) == kept


def test_dropped_head_is_not_the_one_a_backbone_of_the_same_seed_started_from(backbone):
    """A run from seed s builds the very classifier the backbone's own seed-s run started from; dropping the
    head must not hand that back (the backbone's features still favour it)."""
    seed = resolve_config(cli_values=TINY).seed
    heads = []
    for _ in range(2):
        torch.manual_seed(seed)
        model = FerResNet18(7)
        started_from = model.fc.weight.detach().clone()
        load_pretrained(model, backbone / "faces.pt", "drop", SYNTHETIC)
        assert not torch.equal(model.fc.weight, started_from)
        heads.append(model.fc.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])  # still a function of the seed


def test_keeping_a_head_of_other_classes_is_refused(backbone):
    with pytest.raises(CheckpointError, match=r"classifier is for Surprise, .*use --pretrained-head drop"):
        load_pretrained(FerResNet18(7), backbone / "faces.pt", "keep", tuple("abcdefg"))


def test_runs_start_from_the_backbone(backbone):
    metrics = train(resolve_config(cli_values={**TINY, "out": str(backbone / "child"), "epochs": 1,
                                                "pretrained": str(backbone / "faces.pt"), "pretrained_head": "drop",
                                                "lr": 1e-12}))
    child = read_checkpoint(backbone / "child" / "checkpoint.pt")["model"]
    source = torch.load(backbone / "faces.pt", weights_only=True)["state_dict"]
    # lr 1e-12: the weights stay where they started, the backbone's (the classifier was initialised afresh)
    assert torch.allclose(child["layer3.0.conv1.weight"], source["layer3.0.conv1.weight"], atol=1e-9)
    assert not torch.allclose(child["fc.weight"], source["fc.weight"])
    assert metrics["config"]["pretrained_head"] == "drop"


def test_backbone_without_head(backbone):
    assert main(["backbone", str(backbone / "source" / "checkpoint.pt"), "--out", str(backbone / "nohead.pt"),
                 "--head", "drop"]) == 0
    saved = torch.load(backbone / "nohead.pt", weights_only=True)
    assert "fc.weight" not in saved["state_dict"] and saved["card"]["classifier"] == "left out"


def test_foreign_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": FerResNet18(7).state_dict()}, foreign)  # weights, but not a smec_fast run
    assert main(["backbone", str(foreign), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "foreign.pt: not a smec_fast checkpoint" in err
    assert not (tmp_path / "x.pt").exists()


def test_card_names_the_weights_by_their_digest(backbone):
    from smec_fast.export import weights_digest

    card = json.loads((backbone / "faces.pt.json").read_text())
    weights = torch.load(backbone / "faces.pt", weights_only=True)["state_dict"]
    assert card["weights_sha256"] == weights_digest(weights)
    weights["layer1.0.conv1.weight"][0, 0, 0, 0] += 1e-6
    assert weights_digest(weights) != card["weights_sha256"]
