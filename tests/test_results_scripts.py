"""The scripts that turn the committed runs under docs/results/ into tables and figures."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

PRETRAINED = REPO / "docs" / "results" / "fer2013-pretrained"


def load(name: str):
    sys.path.insert(0, str(PRETRAINED))  # the scripts import each other by name
    try:
        spec = importlib.util.spec_from_file_location(name, PRETRAINED / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PRETRAINED))
    return module


@pytest.mark.parametrize("script", sorted((REPO / "docs" / "results").glob("*/*.sh")), ids=lambda p: p.parent.name)
def test_the_experiment_scripts_parse(script):
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def fake_run(root, folder, label, seed, test, val, auroc=0.8, relabel=None, checkpoint=False, cpu=None,
             exist_ok=False):
    """A finished run's folder: metrics.json whose history has these test and validation accuracies."""
    history = []
    for e, (t, v) in enumerate(zip(test, val)):
        train = {"loss": 2.0 - t / 100}
        if relabel is not None:
            train.update(relabel[e])
        history.append({"epoch": e + 1, "train": train, "val": {"accuracy": v, "balanced_accuracy": v - 5},
                        "test": {"accuracy": t, "balanced_accuracy": t - 10}})
    cell = root / folder / label / "noise40" / f"seed{seed}"
    cell.mkdir(parents=True, exist_ok=exist_ok)
    metrics = {"history": history, "config": {"seed": seed}, "label_audit": {"auroc": auroc}}
    if cpu is not None:
        metrics["environment"] = {"cpu": cpu}
    (cell / "metrics.json").write_text(json.dumps(metrics))
    if checkpoint:
        (cell / "checkpoint.pt").write_bytes(b"weights")
    return cell


def test_plateau_cuts_each_run_at_every_epoch_count_and_extends_the_unpeaked(tmp_path):
    plateau = load("plateau")
    rising = [40.0 + e for e in range(30)]  # still climbing at 30: best validation epoch 30
    peaked = [50.0 - abs(e - 4) for e in range(30)]  # peaks at epoch 5
    fake_run(tmp_path, "plateau", "smec", 0, rising, rising, auroc=0.9, checkpoint=True)
    fake_run(tmp_path, "plateau", "smec", 1, [v + 2 for v in rising], rising, auroc=0.7)
    fake_run(tmp_path, "plateau", "eac", 0, peaked, peaked)
    fake_run(tmp_path, "plateau", "eac", 1, [v + 1 for v in peaked], peaked)
    fake_run(tmp_path, "plateau", "ce", 0, peaked, peaked)  # never extended: not SMEC or EAC
    fake_run(tmp_path, "plateau", "ce", 1, peaked, peaked)

    todo = plateau.extend(tmp_path, seeds={0}, last=3)
    assert todo == [("smec", 0)]
    seeded = tmp_path / "plateau45" / "smec" / "noise40" / "seed0"
    assert (seeded / "checkpoint.pt").read_bytes() == b"weights" and not (seeded / "metrics.json").exists()
    assert plateau.extend(tmp_path, seeds=None, last=3) == [("smec", 0), ("smec", 1)]
    assert not (tmp_path / "plateau45" / "smec" / "noise40" / "seed1").exists()  # no checkpoint left to copy

    text = plateau.write_tables(tmp_path)
    after10 = text.split("## After 10 epochs")[1].split("##")[0]
    # SMEC at 10 epochs: final 49 and 51 (mean 50, std 1.41), selected = final (validation rises), no AUROC yet
    assert "| SMEC | shared (the paper's) | 0, 1 | 50.00 ± 1.41 | 40.00 ± 1.41 | 50.00 ± 1.41 | 50.00 ± 1.41 | - |" \
        in after10
    assert "| EAC | shared | 0, 1 | 45.50 ± 0.71 | 35.50 ± 0.71 | 50.50 ± 0.71 | 50.50 ± 0.71 | - |" in after10
    after30 = text.split("## After 30 epochs")[1].split("##")[0]
    assert "| 0.800 ± 0.141 |" in after30  # the AUROC at the runs' last epoch
    assert "## After 45 epochs" not in text
    assert "| EAC | shared | 0 | 30 | 5 (50.00) | 5 (50.00) | not recorded |" in text
    assert (tmp_path / "plateau.png").stat().st_size > 0

    # SMEC seed 0 continued to 45 epochs stands in for its 30-epoch run, which keeps its AUROC at 30
    fake_run(tmp_path, "plateau45", "smec", 0, rising + [70.0] * 15, rising + [70.0] * 15, auroc=0.5, exist_ok=True)
    text = plateau.write_tables(tmp_path)
    assert "| 0.800 ± 0.141 |" in text.split("## After 30 epochs")[1].split("##")[0]
    assert "| SMEC | shared (the paper's) | 0 | 70.00 | 60.00 | 70.00 | 70.00 | 0.500 |" \
        in text.split("## After 45 epochs")[1].split("##")[0]
    assert "| SMEC | shared (the paper's) | 0 | 45 | 31 (70.00) | 31 (70.00) | not recorded |" in text


def test_plateau_shows_192_px_beside_its_96_px_twins_and_scn_relabelling(tmp_path):
    plateau = load("plateau")
    curve = [40.0 + e for e in range(30)]
    fake_run(tmp_path, "plateau", "smec", 0, curve, curve)
    fake_run(tmp_path, "size192", "smec", 0, [60.0] * 20, [60.0] * 20, auroc=0.95)
    fake_run(tmp_path, "size192", "eac", 0, [58.0] * 20, [58.0] * 20, auroc=0.9)
    fake_run(tmp_path, "plateau", "eac", 0, [50.0] * 30, [50.0] * 30)
    counts = [{"relabel_changed": 0, "relabel_restored": 0, "relabel_overwrote": 0, "labels_wrong": 0.4}] * 10
    counts += [{"relabel_changed": 30, "relabel_restored": 20, "relabel_overwrote": 4, "labels_wrong": 0.396}] * 20
    fake_run(tmp_path, "plateau", "scn", 0, curve, curve, relabel=counts)
    text = plateau.write_tables(tmp_path)
    size = text.split("## 192 px against 96 px, 20 epochs each")[1].split("##")[0]
    assert "| SMEC, 192 px | shared (the paper's) | 0 | 60.00 | 50.00 | 60.00 | 60.00 | 0.950 |" in size
    assert "| SMEC, 96 px | shared (the paper's) | 0 | 59.00 | 49.00 | 59.00 | 59.00 | - |" in size
    assert "| EAC, 192 px | shared | 0 | 20 | 1 (58.00) | 1 (58.00) | not recorded |" in text  # best epochs
    large = text.split("## SMEC against EAC and ELR at 192 px, 20 epochs")[1].split("##")[0]
    assert "| EAC, 192 px | shared | 0 | +2.00 (1 of 1) | +2.00 (1 of 1) | +2.00 (1 of 1) | +2.00 (1 of 1) | " \
           "+0.050 (1 of 1) |" in large
    small = text.split("## SMEC against EAC and ELR at 96 px, 20 epochs")[1].split("##")[0]
    assert "| EAC, 96 px | shared | 0 | +9.00 (1 of 1) | +9.00 (1 of 1) | +9.00 (1 of 1) | +9.00 (1 of 1) | - |" \
        in small
    relabel = text.split("## SCN's relabelling by epoch")[1]
    assert "| SCN | shared | 1-10 | 1 | 0.0 | 0.0 | 0.0 | 40.00 |" in relabel
    assert "| SCN | shared | 11-30 | 1 | 30.0 | 20.0 | 4.0 | 39.60 |" in relabel
    assert (tmp_path / "size192.png").exists()


def test_plateau_puts_smec_against_each_method_seed_by_seed(tmp_path):
    plateau = load("plateau")
    fake_run(tmp_path, "plateau", "smec", 0, [60.0] * 30, [60.0] * 30, auroc=0.9)
    fake_run(tmp_path, "plateau", "smec", 1, [62.0] * 30, [62.0] * 30, auroc=0.8)
    fake_run(tmp_path, "plateau", "eac", 0, [55.0] * 30, [55.0] * 30, auroc=0.85)
    fake_run(tmp_path, "plateau", "eac", 1, [55.5] * 30, [55.5] * 30, auroc=0.85)
    fake_run(tmp_path, "plateau", "ce", 0, [63.0] * 30, [63.0] * 30, auroc=0.7)
    fake_run(tmp_path, "plateau", "ce", 1, [63.0] * 30, [63.0] * 30, auroc=0.7)
    text = plateau.write_tables(tmp_path)
    after30 = text.split("## SMEC against each method after 30 epochs")[1].split("##")[0]
    # differences 5 and 6.5, mean 5.75; spreads sqrt(2) and sqrt(0.125), their mean 0.884: 6.5 spreads
    assert ("| EAC | shared | 0, 1 | +5.75 (2 of 2; +6.5 spreads) | +5.75 (2 of 2; +6.5 spreads) | "
            "+5.75 (2 of 2; +6.5 spreads) | +5.75 (2 of 2; +6.5 spreads) | +0.000 (1 of 2; +0.0 spreads) |") in after30
    # differences -3 and -1 against spreads sqrt(2) and 0: -2.8 spreads; AUROC +0.2 and +0.1 against 0.0707 and 0
    assert ("| CE | shared | 0, 1 | -2.00 (0 of 2; -2.8 spreads) | -2.00 (0 of 2; -2.8 spreads) | "
            "-2.00 (0 of 2; -2.8 spreads) | -2.00 (0 of 2; -2.8 spreads) | +0.150 (2 of 2; +4.2 spreads) |") in after30
    after10 = text.split("## SMEC against each method after 10 epochs")[1].split("##")[0]
    assert "| EAC | shared | 0, 1 | +5.75 (2 of 2; +6.5 spreads) |" in after10 and after10.count("| - |") == 2


def test_plateau_curves_give_a_method_one_colour_and_dash_its_second_line(tmp_path):
    plateau = load("plateau")
    curve = [40.0 + e for e in range(12)]
    for label in ("smec", "eac", "eac-official"):
        fake_run(tmp_path, "plateau", label, 0, curve, curve)
    rows = plateau.ordered(plateau.runs(tmp_path / "plateau"))
    drawn = plateau.plot_curves([(f"{name}, {recipe}", cells, recipe == "official") for name, recipe, cells in rows],
                                tmp_path / "c.png", "title")
    (smec, smec_style, smec_colour), (_, eac_style, eac_colour), (label, style, colour) = drawn
    assert smec.startswith("SMEC, shared") and label == "EAC, official (seed 0)"
    assert (smec_style, eac_style, style) == ("-", "-", "--")
    assert colour == eac_colour != smec_colour


def test_plateau_curves_dot_the_epochs_only_a_continued_run_reaches(tmp_path):
    plateau = load("plateau")
    fake_run(tmp_path, "plateau", "smec", 0, [50.0] * 12, [50.0] * 12)
    fake_run(tmp_path, "plateau", "smec", 1, [52.0] * 15, [52.0] * 15)
    fake_run(tmp_path, "plateau", "eac", 0, [48.0] * 12, [48.0] * 12)
    fake_run(tmp_path, "plateau", "eac", 1, [49.0] * 12, [49.0] * 12)
    rows = plateau.ordered(plateau.runs(tmp_path / "plateau"))
    drawn = plateau.plot_curves([(f"{name}, {recipe}", cells, False) for name, recipe, cells in rows],
                                tmp_path / "c.png", "title")
    assert [(label, style) for label, style, _ in drawn] == [
        ("SMEC, shared (the paper's) (seeds 0,1)", "-"),
        ("SMEC, shared (the paper's), epochs 13-15 (seed 1)", ":"),
        ("EAC, shared (seeds 0,1)", "-")]
    assert drawn[0][2] == drawn[1][2] != drawn[2][2]


def test_plateau_leaves_out_a_seed_until_every_variant_has_finished_it(tmp_path):
    plateau = load("plateau")
    fake_run(tmp_path, "plateau", "smec", 0, [60.0] * 30, [60.0] * 30)
    fake_run(tmp_path, "plateau", "smec", 1, [70.0] * 30, [70.0] * 30)  # a sitting ended before EAC's seed 1
    fake_run(tmp_path, "plateau", "eac", 0, [55.0] * 30, [55.0] * 30)
    fake_run(tmp_path, "size192", "smec", 0, [50.0] * 20, [50.0] * 20)
    fake_run(tmp_path, "size192", "eac", 0, [48.0] * 20, [48.0] * 20)
    fake_run(tmp_path, "size192", "eac", 1, [49.0] * 20, [49.0] * 20)
    text = plateau.write_tables(tmp_path)
    assert ("Left out until every variant of their table has finished the seed: SMEC, shared (the paper's), "
            "seed 1; EAC, shared, seed 1 at 192 px.") in text
    after30 = text.split("## After 30 epochs")[1].split("##")[0]
    assert "| SMEC | shared (the paper's) | 0 | 60.00 | 50.00 | 60.00 | 60.00 | 0.800 |" in after30
    assert "| EAC, 192 px | shared | 0 | 48.00 |" in text and "70.00" not in text and "49.00" not in text
    assert plateau.same_seeds({}) == ({}, [])


def test_plateau_refuses_an_empty_folder(tmp_path):
    with pytest.raises(SystemExit, match="no finished run"):
        load("plateau").write_tables(tmp_path)


def test_plateau_says_when_the_finished_runs_share_no_seed(tmp_path):
    fake_run(tmp_path, "plateau", "smec", 0, [60.0] * 30, [60.0] * 30)
    fake_run(tmp_path, "plateau", "eac", 1, [55.0] * 30, [55.0] * 30)
    with pytest.raises(SystemExit, match=r"no seed is finished by every variant yet; finished: SMEC, shared "
                                         r"\(the paper's\), seed 0; EAC, shared, seed 1"):
        load("plateau").write_tables(tmp_path)


def test_plateau_compares_the_first_epochs_with_the_ten_epoch_runs(tmp_path):
    plateau = load("plateau")
    curve = [40.0 + e for e in range(30)]
    zen4 = "AMD EPYC 9R14 (family 25, model 17), 2 cores, torch capability AVX512, native bf16 (AVX512-BF16)"
    intel = ("Intel(R) Xeon(R) Processor (family 6, model 167), 2 cores, torch capability AVX512, native bf16 "
             "(AMX and AVX512-BF16)")
    fake_run(tmp_path, "plateau", "smec", 0, curve, curve, cpu=intel)
    fake_run(tmp_path, "noise40", "smec", 0, curve[:10], curve[:10], cpu=zen4)
    fake_run(tmp_path, "plateau", "smec", 1, curve, curve)
    old = fake_run(tmp_path, "noise40", "smec", 1, curve[:6] + [v + 0.5 for v in curve[6:9]] + [curve[9] - 1.25],
             curve[:10])
    recorded = json.loads((old / "metrics.json").read_text())
    recorded["precision"] = {"amp": "bf16", "reason": "CPU with AVX512-BF16"}
    (old / "metrics.json").write_text(json.dumps(recorded))
    fake_run(tmp_path, "plateau", "scn-official", 0, curve, curve)
    fake_run(tmp_path, "baselines", "scn-official", 0, curve[:10], [v - 1 for v in curve[:10]])
    fake_run(tmp_path, "plateau", "ce", 0, curve, curve)  # no 10-epoch run to compare with
    for label in ("scn-official", "ce"):  # every variant on seeds 0 and 1 (same_seeds)
        fake_run(tmp_path, "plateau", label, 1, curve, curve)
    everything = plateau.write_tables(tmp_path)
    assert "| SMEC | shared (the paper's) | 0 | 30 | 30 (69.00) | 30 (69.00) | Intel(R) Xeon(R) Processor (family 6, " \
           "model 167), AMX and AVX512-BF16 |" in everything
    text = everything.split("## The first 10 epochs against the 10-epoch runs")[1].split("##")[0]
    assert ("| SMEC | shared (the paper's) | 0 | 10 | Intel(R) Xeon(R) Processor (family 6, model 167) | "
            "AMD EPYC 9R14 (family 25, model 17) | equal to the last digit |") in text
    assert ("| SMEC | shared (the paper's) | 1 | 10 | not recorded | not recorded (CPU with AVX512-BF16) | "
            "differ from epoch 7; test accuracy up to 1.25 points apart |") in text
    assert "| SCN | official | 0 | 10 | not recorded | not recorded | differ from epoch 1;" in text  # validation
    assert "| CE |" not in text
