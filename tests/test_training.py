"""End-to-end runs on the embedded synthetic faces, at sizes that keep the suite quick on a CPU."""

import csv
import json
import logging
import subprocess
import sys

import pytest
import torch

from smec_fast.cli import main
from smec_fast.config import resolve_config
from smec_fast.data import torch_loader as loader_module
from smec_fast.data.noise import read_label_file
from smec_fast.errors import ConfigError, DataError
from smec_fast.precision import describe_cpu
from smec_fast.checkpoint import read_checkpoint
from smec_fast.trainer import train

# Under pytest-xdist the tests that compile share one worker: inductor's start-up (10-12 s of one core, capped
# to AVX2) is paid once, and its kernel cache is shared.
COMPILE_GROUP = pytest.mark.xdist_group("compile")
# Likewise the tests that read `finished_run`: it is trained once.
USES_FINISHED_RUN = pytest.mark.xdist_group("finished_run")

TINY = dict(image_size=32, synthetic_train_size=160, synthetic_test_size=64, batch_size=32, epochs=3,
            progress=False, num_workers=0)


def tiny_config(out, **overrides):
    return resolve_config(cli_values={**TINY, "out": str(out), **overrides})


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "smec"
    metrics = train(tiny_config(out, noise_rate=0.25, val_fraction=0.25))
    return out, metrics


@USES_FINISHED_RUN
def test_run_writes_the_results_contract(finished_run):
    out, metrics = finished_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for key in ("method", "noise_rate", "epochs", "best_accuracy", "final_accuracy", "final_balanced_accuracy",
                "best_balanced_accuracy", "per_class_accuracy", "history", "config"):
        assert key in on_disk
    assert on_disk["method"] == "smec" and on_disk["noise_rate"] == 0.25 and on_disk["epochs"] == 3
    assert on_disk["environment"]["cpu"] == describe_cpu()  # the kind of CPU it ran on
    assert on_disk["lambda_con"] == 3.0 and on_disk["config"]["split"] == "left-right"
    assert on_disk["best_accuracy"] == max(h["test"]["accuracy"] for h in on_disk["history"])
    assert on_disk["final_accuracy"] == on_disk["history"][-1]["test"]["accuracy"]
    assert list(on_disk["per_class_accuracy"]) == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness",
                                                    "Anger", "Neutral"]
    assert sum(map(sum, on_disk["confusion_matrix"])) == 64
    assert json.loads((out / "config.json").read_text()) == on_disk["config"]
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and {"train_cls", "train_con", "test_accuracy"} <= set(rows[0])
    labels = read_label_file(out / "train_labels.txt", 7)
    assert (on_disk["num_train"], on_disk["num_val"]) == (120, 40) and len(labels) == 120
    assert on_disk["noise"]["changed"] == 40  # round(0.25 * 160), before the validation part is held out
    chosen = max(on_disk["history"], key=lambda h: h["val"]["accuracy"])
    assert on_disk["selected_epoch"] == chosen["epoch"]
    assert on_disk["selected_accuracy"] == chosen["test"]["accuracy"]


@USES_FINISHED_RUN
def test_selected_epoch_is_kept_and_usable(finished_run, tmp_path, capsys):
    out, metrics = finished_run
    selected = read_checkpoint(out / "selected.pt")
    assert metrics["selected_checkpoint"] == "selected.pt"
    assert selected["epoch"] == metrics["selected_epoch"] and len(selected["history"]) == selected["epoch"]
    assert selected["chosen_by"] == "validation accuracy"
    final = read_checkpoint(out / "checkpoint.pt")
    same = all(torch.equal(t, final["model"][k]) for k, t in selected["model"].items())
    assert same == (metrics["selected_epoch"] == metrics["epochs"])
    # `evaluate` on the kept model reproduces the selected epoch's test figures exactly
    assert main(["evaluate", str(out / "selected.pt"), "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["accuracy"] == metrics["selected_accuracy"]
    assert result["balanced_accuracy"] == metrics["selected_balanced_accuracy"]
    assert main(["backbone", str(out / "selected.pt"), "--out", str(tmp_path / "b.pt")]) == 0
    assert "chosen by validation accuracy" in capsys.readouterr().out
    card = json.loads((tmp_path / "b.pt.json").read_text())
    assert card["epochs"] == metrics["selected_epoch"] and card["epoch_chosen_by"] == "validation accuracy"
    assert card["final_test_accuracy"] == metrics["selected_accuracy"]


@USES_FINISHED_RUN
def test_resumed_run_keeps_the_same_selected_epoch(finished_run, tmp_path):
    out, metrics = finished_run
    train(tiny_config(tmp_path / "cut", noise_rate=0.25, val_fraction=0.25, epochs=2))
    resumed = train(tiny_config(tmp_path / "cut", noise_rate=0.25, val_fraction=0.25, resume=True))
    assert resumed["selected_epoch"] == metrics["selected_epoch"]
    a, b = read_checkpoint(out / "selected.pt"), read_checkpoint(tmp_path / "cut" / "selected.pt")
    assert a["epoch"] == b["epoch"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_run_without_validation_keeps_no_selected_epoch(tmp_path):
    metrics = train(tiny_config(tmp_path / "r", method="ce", epochs=1))
    assert not (tmp_path / "r" / "selected.pt").exists() and "selected_checkpoint" not in metrics


@USES_FINISHED_RUN
def test_existing_run_is_not_overwritten(finished_run):
    out, _ = finished_run
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(tiny_config(out, noise_rate=0.25, val_fraction=0.25))
    with pytest.raises(ConfigError, match=r"cannot resume .*lr: 0.001 -> 0.5"):
        train(tiny_config(out, noise_rate=0.25, val_fraction=0.25, lr=0.5, resume=True))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    full = train(tiny_config(tmp_path / "full", noise_rate=0.25, epochs=2))

    # Interrupt the second (last) epoch after two batches, as a Ctrl-C or a killed job would.
    original_iter = loader_module.SplitLoader.__iter__

    def interrupted_iter(self):
        for step, batch in enumerate(original_iter(self)):
            if self.train and self.epoch == 1 and step == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(loader_module.SplitLoader, "__iter__", interrupted_iter)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "cut", noise_rate=0.25, epochs=2))
    assert read_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "cut" / "metrics.json").exists()
    monkeypatch.setattr(loader_module.SplitLoader, "__iter__", original_iter)

    resumed = train(tiny_config(tmp_path / "cut", noise_rate=0.25, epochs=2, resume=True))
    for key in ("best_accuracy", "final_accuracy", "final_balanced_accuracy", "per_class_accuracy",
                "confusion_matrix"):
        assert resumed[key] == full[key], key
    assert [h["train"] for h in resumed["history"]] == [h["train"] for h in full["history"]]
    a = read_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert torch.equal(a["method"]["elr.targets"], b["method"]["elr.targets"])


@pytest.mark.slow(seconds=100)
def test_short_smec_run_on_embedded_data_beats_chance(tmp_path, caplog):
    # The synthetic preset (64 px, lr 1e-3, lambda_con warm-up) on 1500 faces for two epochs at batch 16: more
    # faces and steps for the same work learn more than 1000 faces over four epochs at batch 32, which overfit
    # (training loss 0.1, 55 % test accuracy). Measured over seeds 0-2: 61-68 % accuracy, 33-48 % balanced, in
    # bf16 and in fp32 alike.
    with caplog.at_level(logging.INFO, logger="smec_fast"):
        metrics = train(resolve_config(cli_values=dict(out=str(tmp_path / "smec"), synthetic_train_size=1500,
                                                       synthetic_test_size=300, epochs=2, batch_size=16,
                                                       progress=False)))
    assert "split: left-right (grid 1x2, pieces H x W/2)" in caplog.text
    # Chance: 1/7 balanced accuracy; always answering the largest class gives 38.7 % accuracy here.
    assert metrics["best_accuracy"] > 50.0, metrics["history"]
    assert metrics["best_balanced_accuracy"] > 25.0, metrics["history"]


def test_cli_trains_and_reports(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "smec_fast", "train", "--out", str(out), "--image-size", "32",
         "--synthetic-train-size", "64", "--synthetic-test-size", "32", "--epochs", "1", "--batch-size", "16",
         "--method", "elr", "--progress", "false"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "elr: best accuracy" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["method"] == "elr"
    again = subprocess.run([sys.executable, "-m", "smec_fast", "train", "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr


def test_cli_writes_a_noise_file(tmp_path, shared):
    out = tmp_path / "noise40.txt"
    labels = shared / "data" / "rafdb-labels" / "list_patition_label.txt"
    result = subprocess.run([sys.executable, "-m", "smec_fast", "noise", "--labels", str(labels), "--rate", "0.4",
                             "--seed", "1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    noisy, clean = read_label_file(out, 7), read_label_file(labels, 7)
    assert len(noisy) == 12271
    assert sum(noisy[name] != clean[name] for name in noisy) == round(0.4 * 12271)


def _folder_run(out, data, **overrides):
    values = dict(dataset="folder", data=str(data), out=str(out), image_size=32, batch_size=16, epochs=1,
                  method="elr", progress=False, num_workers=1)
    return train(resolve_config(cli_values={**values, **overrides}))


def test_every_loader_trains_the_same_batches(tmp_path, fer_subset):
    # 48 px faces enlarged to 64: the loaders' bilinear filters agree to one grey level of rounding (when
    # shrinking, DALI treats the border pixels differently), so the same batches and flips give nearly the
    # same loss. In fp32: bf16 would round the step more coarsely than the loaders differ.
    runs = {kind: _folder_run(tmp_path / kind, fer_subset, loader=kind, image_size=64, amp="off")
            for kind in ("torch", "cached", "dali")}
    reference = runs["torch"]["history"][0]["train"]["loss"]
    for kind, metrics in runs.items():
        assert metrics["history"][0]["train"]["loss"] == pytest.approx(reference, rel=5e-3), kind
        assert metrics["num_train"] == 84 and metrics["num_test"] == 28


def test_bad_training_image_stops_the_run_or_is_skipped(tmp_path, fer_subset):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fer_subset, data)
    victim = sorted((data / "train" / "fear").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match=f"{victim.name}: corrupt JPEG, truncated"):
        _folder_run(tmp_path / "stop", data)
    metrics = _folder_run(tmp_path / "skip", data, skip_bad_images=True)
    assert metrics["num_train"] == 83


@pytest.mark.parametrize("method", ["smec", "elr"])
def test_fused_and_reference_kernels_give_the_same_step(tmp_path, method):
    """The objective's loss and every parameter gradient agree between --kernels fused and reference. (Whole
    runs are not compared: Adam turns float-rounding differences into lr-sized steps, which a few steps of
    from-scratch training amplify.)"""
    import copy

    from smec_fast.data import SplitLoader, synthetic_split
    from smec_fast.kernels import kernel_backend
    from smec_fast.methods import build_method
    from smec_fast.model import FerResNet18

    split = synthetic_split("train", 64, 32, seed=0)
    images, labels, index = next(iter(SplitLoader(split, 32, 32, torch.device("cpu"), train=True)))
    cfg = resolve_config(cli_values={"method": method, "noise_rate": 0.3})
    model, objective = FerResNet18(7), build_method(cfg, split.labels, 7, 0.3)
    results = {}
    for backend in ("fused", "reference"):
        m, o = copy.deepcopy(model), copy.deepcopy(objective)
        with kernel_backend(backend):
            loss, _ = o(m, images, labels, index)
        loss.backward()
        results[backend] = loss.detach(), {n: p.grad for n, p in m.named_parameters()}, o.elr.targets
    (loss_f, grads_f, targets_f), (loss_r, grads_r, targets_r) = results["fused"], results["reference"]
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-6, atol=0)
    assert torch.equal(targets_f, targets_r)
    for name, grad in grads_r.items():
        torch.testing.assert_close(grads_f[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(), msg=name)


def test_run_selects_the_kernel_backend(tmp_path):
    from smec_fast.kernels import get_kernel_backend, set_kernel_backend

    train(tiny_config(tmp_path / "reference", epochs=1, kernels="reference"))
    assert get_kernel_backend() == "reference"
    set_kernel_backend("fused")


@COMPILE_GROUP
@pytest.mark.slow(seconds=35)
@pytest.mark.parametrize("method", ["elr", "scn"])
def test_compiled_step_matches_eager_step(method):
    """torch.compile of model + loss gives the eager step's loss, gradients and per-sample state, with the
    state updates active: ELR's in-place targets and SCN's relabelling (from epoch 0), which a compiled
    backward must not see (reading the new labels there moves the classifier's gradient by ~45 %).

    The classifier and the method's heads, next to the loss, must match tightly. Deeper in the network this
    CPU's compiled backward drifts from float64 by up to 2e-2 of a tensor's largest gradient where eager
    stays near 5e-6 (bench/results/compile_check_cpu.json), so those tensors get a bound of 0.1."""
    import copy

    from smec_fast.data import SplitLoader, synthetic_split
    from smec_fast.methods import build_method
    from smec_fast.model import FerResNet18
    from smec_fast.trainer import TrainingObjective

    split = synthetic_split("train", 64, 32, seed=0)
    images, labels, index = next(iter(SplitLoader(split, 32, 32, torch.device("cpu"), train=True)))
    cfg = resolve_config(cli_values={"method": method, "noise_rate": 0.3, "scn_relabel_epoch": 0,
                                     "scn_margin_relabel": 0.0})
    objective = TrainingObjective(FerResNet18(7), build_method(cfg, split.labels, 7, 0.3))
    objective.method.start_epoch(0, seed=0)
    results = {}
    for mode in ("compiled", "eager"):
        o = copy.deepcopy(objective)
        loss, _ = (torch.compile(o) if mode == "compiled" else o)(images, labels, index)
        loss.backward()
        o.method.end_step(index)
        state = {name: o.method.get_buffer(name).clone() for name in o.method.sample_state}
        results[mode] = loss.detach(), {n: p.grad for n, p in o.named_parameters() if p.grad is not None}, state
    (loss_c, grads_c, state_c), (loss_e, grads_e, state_e) = results["compiled"], results["eager"]
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=0)
    assert grads_c.keys() == grads_e.keys()
    for name, grad in grads_e.items():
        scale = grad.abs().max().item()
        if name.startswith(("model.fc.", "method.")):
            torch.testing.assert_close(grads_c[name], grad, rtol=1e-3, atol=1e-4 * scale,
                                       msg=lambda m, name=name: f"{name}: {m}")
        else:
            assert (grads_c[name] - grad).abs().max().item() <= 0.1 * scale, name
    for name, value in state_e.items():
        torch.testing.assert_close(state_c[name], value, rtol=1e-5, atol=1e-6, msg=name)
    if method == "scn":
        assert not torch.equal(state_e["labels"], split.labels)  # the step did relabel


@COMPILE_GROUP
@pytest.mark.slow(seconds=55)
def test_compiled_channels_last_run_matches_eager_run(tmp_path):
    """--compile on --channels-last on trains the same steps as the eager NCHW default: the same per-epoch
    losses (to float rounding; a tiny learning rate keeps Adam from amplifying it) and graphs were compiled."""
    from torch._dynamo.utils import counters

    counters.clear()
    common = dict(epochs=1, method="smec", noise_rate=0.3, lr=1e-6, synthetic_train_size=96)
    eager = train(tiny_config(tmp_path / "eager", **common))
    assert not counters["stats"]["unique_graphs"]
    fast = train(tiny_config(tmp_path / "fast", compile="on", channels_last="on", **common))
    assert counters["stats"]["unique_graphs"] >= 1
    for part in ("loss", "cls", "con"):
        torch.testing.assert_close(fast["history"][0]["train"][part], eager["history"][0]["train"][part],
                                   rtol=1e-4, atol=1e-6, msg=part)
    assert fast["config"]["compile"] == "on" and eager["config"]["compile"] == "auto"
