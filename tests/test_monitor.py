"""What a run reports about its speed: throughput and input wait, profiles, TensorBoard."""

import csv
import json
import subprocess
import sys
import time

import pytest
import torch

from smec_fast.config import resolve_config
from smec_fast.errors import ConfigError
from smec_fast.monitor import EpochMeter, parse_step_range
from smec_fast.trainer import train

TINY = dict(image_size=40, synthetic_train_size=160, synthetic_test_size=64, batch_size=32, epochs=2,
            progress=False, num_workers=0)


def tiny_config(out, **overrides):
    return resolve_config(cli_values={**TINY, "out": str(out), **overrides})


def test_meter_splits_the_epoch_into_input_wait_and_step():
    def slow_batches():
        for _ in range(5):
            time.sleep(0.05)  # the loader's share
            yield torch.zeros(4)

    meter = EpochMeter(torch.device("cpu"), world=2)
    meter.start()
    batches = slow_batches()
    while (batch := meter.fetch(batches)) is not None:
        meter.step_started()
        time.sleep(0.02)  # the step's share
        meter.step_finished(batch.shape[0])
    speed = meter.finish()
    assert speed["images"] == 2 * 5 * 4  # both processes' images
    assert speed["data_wait_s"] >= 0.25 and speed["data_wait_share"] > speed["step_share"] > 0
    assert speed["data_wait_share"] + speed["step_share"] <= 1.0 + 1e-9
    assert speed["images_per_s"] == pytest.approx(40 / speed["train_s"])
    assert speed["peak_memory_mib"] > 10 and speed["memory"] == "resident"


def test_every_run_reports_images_per_second_and_input_wait(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "smec_fast", "train", "--out", str(out), "--image-size", "40",
         "--synthetic-train-size", "160", "--synthetic-test-size", "64", "--epochs", "2", "--num-workers", "0"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "img/s=" in output  # the progress bar
    assert output.count("img/s, input wait") == 2  # the per-epoch lines
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["throughput"]
    epochs = [h["throughput"] for h in metrics["history"]]
    assert block["images_per_s"] == epochs[1]["images_per_s"] > 0  # the epochs after the first
    assert block["first_epoch_images_per_s"] == epochs[0]["images_per_s"]
    assert all(e["images"] == 160 and 0 <= e["data_wait_share"] < 1 and e["eval_s"] > 0 for e in epochs)
    rows = list(csv.DictReader((out / "log.csv").open()))
    for row, epoch in zip(rows, epochs):
        assert float(row["images_per_s"]) == pytest.approx(epoch["images_per_s"])
        assert float(row["data_wait_share"]) == pytest.approx(epoch["data_wait_share"])
        assert float(row["peak_memory_mib"]) == pytest.approx(epoch["peak_memory_mib"])


def test_profile_writes_a_trace_and_an_op_table_and_training_goes_on(tmp_path):
    # one epoch of 5 steps (0 to 4): steps 2 and 3 profiled, step 4 after the profiler has stopped
    plain = train(tiny_config(tmp_path / "plain", epochs=1))
    profiled = train(tiny_config(tmp_path / "profiled", epochs=1, profile="2:4"))
    assert [h["train"] for h in profiled["history"]] == [h["train"] for h in plain["history"]]
    trace = json.loads((tmp_path / "profiled" / "profile" / "trace.json").read_text())
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any("convolution" in name for name in names)
    assert "smec_fast::split_merge_consistency" in names and "smec_fast::elr_cross_entropy" in names
    table = (tmp_path / "profiled" / "profile" / "ops.txt").read_text()
    assert "training steps 2 to 3" in table and "aten::convolution_backward" in table
    assert "smec_fast::elr_cross_entropy" in table


def test_profile_past_the_end_is_written_when_the_run_ends(tmp_path):
    train(tiny_config(tmp_path / "run", epochs=1, profile="2:100"))  # 5 steps
    assert "training steps 2 to 99" in (tmp_path / "run" / "profile" / "ops.txt").read_text()


@pytest.mark.parametrize("value", ["5", "5:2", "a:b", "-1:3"])
def test_bad_profile_range_names_the_option(value):
    with pytest.raises(ConfigError, match="--profile"):
        parse_step_range(value)
    with pytest.raises(ConfigError, match="--profile"):
        resolve_config(cli_values={"profile": value})


def test_tensorboard_events_hold_the_epochs_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = train(tiny_config(tmp_path / "run", tensorboard=True, val_fraction=0.25))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/cls", "train/con", "test/accuracy", "test/balanced_accuracy", "val/accuracy",
            "lr", "throughput/images_per_s", "throughput/data_wait_share"} <= tags
    for tag, values in (("train/loss", [h["train"]["loss"] for h in metrics["history"]]),
                        ("test/accuracy", [h["test"]["accuracy"] for h in metrics["history"]])):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx(values, rel=1e-6)


def test_tensorboard_without_the_package_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"--tensorboard needs the tensorboard package: pip install tensorboard"):
        train(tiny_config(tmp_path / "run", tensorboard=True))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
