import json

import pytest
from PIL import Image

from smec_fast.cli import main
from smec_fast.errors import ConfigError
from smec_fast.provenance import source_revision
from smec_fast.sweeps import markdown_table, mean_std, paired_difference, paired_table, parse_variants

TINY = ["--image-size", "32", "--synthetic-train-size", "96", "--synthetic-test-size", "32", "--batch-size", "32",
        "--epochs", "1", "--progress", "false", "--num-workers", "0"]


def test_parse_variants():
    variants = parse_variants("ce, smec:grid=2x2:label=split4, smec:cls_loss=ce, smec:split=top-bottom")
    assert [(v.label, v.method, v.overrides) for v in variants] == [
        ("ce", "ce", {}), ("split4", "smec", {"grid": (2, 2)}), ("smec-cls_lossce", "smec", {"cls_loss": "ce"}),
        ("smec-splittop-bottom", "smec", {"grid": (2, 1)})]  # --split spells the grid
    with pytest.raises(ConfigError, match="unknown method 'sce'"):
        parse_variants("sce")
    with pytest.raises(ConfigError, match="labels repeat"):
        parse_variants("smec,smec")
    with pytest.raises(ConfigError, match="set by the sweep"):
        parse_variants("smec:seed=3")
    with pytest.raises(ConfigError, match="unknown option"):
        parse_variants("smec:gird=2x2")


def test_table_gives_mean_and_sample_std_over_seeds():
    cells = [{"label": "ce", "noise_rate": 0.2, "seed": s, "final_balanced_accuracy": v, "best_accuracy": v + 10,
              "final_accuracy": v + 5, "per_class_accuracy": {"a": v, "b": None},
              "label_audit": {"auroc": auc}} for s, v, auc in ((0, 50.0, 0.8), (1, 54.0, 0.9))]
    table = markdown_table({"class_names": ["a", "b"], "cells": cells})
    # mean 52, sample std of (50, 54) = 2.83; AUROC mean 0.85, std of (0.8, 0.9) = 0.071
    assert "| ce | 20 | 52.00 ± 2.83 | 62.00 ± 2.83 | 57.00 ± 2.83 | - | 0.850 ± 0.071 | 52.00 ± 2.83 | - |" in table
    assert mean_std([3.0]) == (3.0, 0.0)


def test_paired_table_puts_smec_against_each_variant_seed_by_seed():
    def cell(label, method, seed, final, auroc=None, rate=0.4):
        return {"label": label, "method": method, "noise_rate": rate, "seed": seed, "final_accuracy": final,
                "final_balanced_accuracy": final - 10, "best_accuracy": final + 1, "selected_accuracy": None,
                "label_audit": {"auroc": auroc} if auroc is not None else {}}

    cells = [cell("ce", "ce", 0, 50.0, 0.7), cell("ce", "ce", 1, 52.0, 0.8), cell("ce", "ce", 2, 40.0, 0.6),
             cell("split4", "smec", 0, 53.0, 0.9), cell("split4", "smec", 1, 51.0, 0.9),
             cell("ce", "ce", 0, 30.0, rate=0.0)]  # no SMEC run at 0 %: no row there
    table = paired_table({"cells": cells}, "split4")
    # seeds 0, 1 (seed 2 has no SMEC run): differences +3, -1 -> +1.00, above on 1 of 2; sample std of both pairs
    # (53, 51) and (50, 52) is 1.414, so +1.00 / 1.414 = +0.7 spreads. AUROC: +0.2, +0.1, std (0, 0.0707).
    assert ("| ce | 40 | 0, 1 | +1.00 (1 of 2; +0.7 spreads) | +1.00 (1 of 2; +0.7 spreads) | - | "
            "+1.00 (1 of 2; +0.7 spreads) | +0.150 (2 of 2; +4.2 spreads) |") in table
    assert table.startswith("split4 minus each variant") and "| ce | 0 |" not in table
    assert paired_table({"cells": cells}, "ce").count("| split4 | 40 | 0, 1 | -1.00 (1 of 2") == 1
    assert paired_table({"cells": [c for c in cells if c["method"] == "ce"]}, "ce") == ""
    assert paired_difference([2.0], [1.0]) == "+1.00 (1 of 1)"
    assert paired_difference([2.0, 2.0], [1.0, 1.0]) == "+1.00 (2 of 2; no spread)"
    assert paired_difference([], []) == "-"


def test_sweep_runs_every_cell_once_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    # a variant's --split overrides the sweep's --grid
    argv = ["sweep", "--methods", "ce,smec:split=top-bottom:label=height", "--noise-rates", "0,0.5", "--seeds", "0",
            "--out", str(out), "--grid", "1x2", *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads((out / "sweep.json").read_text())
    assert [(c["label"], c["noise_rate"]) for c in result["cells"]] == [
        ("ce", 0.0), ("ce", 0.5), ("height", 0.0), ("height", 0.5)]
    smec_cell = json.loads((out / "height" / "noise50" / "seed0" / "metrics.json").read_text())
    assert smec_cell["config"]["grid"] == [2, 1] and smec_cell["config"]["split"] == "top-bottom"
    assert smec_cell["lambda_con"] == 5.0
    assert smec_cell["noise"]["changed"] == 48
    # every run and the sweep record the source they came from (None outside a git checkout)
    assert smec_cell["environment"]["git"] == source_revision() == result["git"]
    assert {c["git"] for c in result["cells"]} == {source_revision()}
    table, paired = (out / "table.md").read_text().split("\nheight minus each variant, seed by seed")
    assert "| height | 50 |" in table and "| ce | 0 |" in table
    rows = {line.split(" | ")[0] + " " + line.split(" | ")[1]: line
            for line in table.splitlines() if line.startswith("| ")}
    assert rows["| ce 0"].split(" | ")[6] == "-"  # no injected noise, nothing to find
    assert 0.0 <= float(rows["| height 50"].split(" | ")[6]) <= 1.0
    # then the SMEC variant against each other one, at each noise rate
    ce_cell = json.loads((out / "ce" / "noise50" / "seed0" / "metrics.json").read_text())
    gap = smec_cell["final_accuracy"] - ce_cell["final_accuracy"]
    assert f"| ce | 50 | 0 | {gap:+.2f} ({int(gap > 0)} of 1) |" in paired and "| ce | 0 | 0 |" in paired
    smec_history = [h["test"]["accuracy"] for h in smec_cell["history"]]
    assert result["cells"][3]["test_accuracy_by_epoch"] == smec_history and len(smec_history) == 1
    for name in ("balanced_accuracy.png", "curves.png"):
        with Image.open(out / name) as png:
            assert png.format == "PNG"

    # A second run trains nothing; removing one cell's metrics retrains only that cell.
    from smec_fast import trainer

    original = trainer.train
    trained = []
    monkeypatch.setattr(trainer, "train", lambda cfg: trained.append(cfg.out) or original(cfg))
    assert main(argv) == 0
    assert trained == []
    (out / "ce" / "noise50" / "seed0" / "metrics.json").unlink()
    (out / "height" / "noise00" / "seed0" / "metrics.json").unlink()
    assert main(argv) == 0
    # seed by seed, each seed's rates in turn, each rate's variants in turn
    assert trained == [str(out / "height" / "noise00" / "seed0"), str(out / "ce" / "noise50" / "seed0")]
    again = json.loads((out / "sweep.json").read_text())
    assert [(c["label"], c["noise_rate"]) for c in again["cells"]] == [
        ("ce", 0.0), ("ce", 0.5), ("height", 0.0), ("height", 0.5)]


@pytest.mark.parametrize("option, value, message", [
    ("--seeds", "0,1,0", "--seeds: values repeat"),
    ("--noise-rates", "0.4,0.401", "--noise-rates: rates that round to the same percentage"),
    ("--reference", "smec", "--reference: no variant is labelled 'smec' (labels: ce)"),
])
def test_sweep_refuses_cells_that_would_share_a_folder(tmp_path, capsys, option, value, message):
    argv = ["sweep", "--methods", "ce", "--noise-rates", "0", "--seeds", "0", "--reference", "ce",
            "--out", str(tmp_path / "s"), *TINY]
    argv[argv.index(option) + 1] = value
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sweep_refuses_per_cell_options(tmp_path, capsys):
    assert main(["sweep", "--methods", "ce", "--noise-rates", "0", "--out", str(tmp_path), "--method", "smec"]) == 2
    assert "--method is set by the sweep for each run" in capsys.readouterr().err


def test_cam_figure_from_two_checkpoints(tmp_path, capsys):
    from smec_fast.config import resolve_config
    from smec_fast.trainer import train

    for method in ("ce", "smec"):
        train(resolve_config(cli_values=dict(out=str(tmp_path / method), method=method, image_size=32,
                                             synthetic_train_size=64, synthetic_test_size=32, epochs=1,
                                             batch_size=32, progress=False)))
    out = tmp_path / "cams.png"
    code = main(["cam", str(tmp_path / "ce" / "checkpoint.pt"), str(tmp_path / "smec" / "checkpoint.pt"),
                 "--labels", "CE,SMEC", "--num", "7", "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    with Image.open(out) as png:
        assert png.width > 400 and png.height > 7 * 150  # 3 columns, 7 rows
    code = main(["cam", str(tmp_path / "ce" / "checkpoint.pt"), "--labels", "A,B", "--out", str(out)])
    assert code == 2 and "--labels gives 2 titles for 1 checkpoints" in capsys.readouterr().err
