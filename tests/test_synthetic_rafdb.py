"""`smec-fast synth-rafdb`: the embedded faces written as a RAF-DB tree that the rafdb dataset path reads."""

import subprocess
import sys

import pytest
import torch

from smec_fast.config import resolve_config
from smec_fast.data import load_rafdb
from smec_fast.data.noise import read_label_file
from smec_fast.data.synthetic import CLASS_NAMES, RAFDB_TRAIN_COUNTS, class_counts
from smec_fast.data.synthetic_rafdb import CHUNK, write_synthetic_rafdb
from smec_fast.trainer import train


def test_tree_follows_the_rafdb_layout_and_proportions(tmp_path):
    written = write_synthetic_rafdb(tmp_path / "rafdb", train=CHUNK + 44, test=30, size=48, workers=1)
    assert written["files"] == CHUNK + 74
    labels = read_label_file(tmp_path / "rafdb" / "basic" / "EmoLabel" / "list_patition_label.txt", 7)
    assert list(labels)[:2] == ["train_00001.jpg", "train_00002.jpg"] and list(labels)[-1] == "test_0030.jpg"
    train_split, test_split = load_rafdb(tmp_path / "rafdb", "train"), load_rafdb(tmp_path / "rafdb", "test")
    assert (len(train_split), len(test_split)) == (CHUNK + 44, 30) and train_split.class_names == CLASS_NAMES
    counts = torch.bincount(train_split.labels, minlength=7).tolist()
    assert counts == class_counts(CHUNK + 44, RAFDB_TRAIN_COUNTS)  # RAF-DB's class proportions
    assert all(p.name.endswith("_aligned.jpg") and p.is_file() for p in train_split.paths)


def test_files_do_not_depend_on_the_number_of_workers(tmp_path):
    one = write_synthetic_rafdb(tmp_path / "one", train=CHUNK + 10, test=8, size=32, workers=1)
    two = write_synthetic_rafdb(tmp_path / "two", train=CHUNK + 10, test=8, size=32, workers=2)
    assert one["files"] == two["files"]
    for image in sorted((tmp_path / "one" / "basic" / "Image" / "aligned").iterdir()):
        assert image.read_bytes() == (tmp_path / "two" / "basic" / "Image" / "aligned" / image.name).read_bytes()
    assert ((tmp_path / "one" / "basic" / "EmoLabel" / "list_patition_label.txt").read_text()
            == (tmp_path / "two" / "basic" / "EmoLabel" / "list_patition_label.txt").read_text())


def test_a_run_trains_on_the_generated_tree(tmp_path):
    write_synthetic_rafdb(tmp_path / "rafdb", train=64, test=16, size=100, workers=1)
    metrics = train(resolve_config(cli_values=dict(dataset="rafdb", data=str(tmp_path / "rafdb"), image_size=40,
                                                   batch_size=16, epochs=1, progress=False, num_workers=0,
                                                   out=str(tmp_path / "run"))))
    assert (metrics["num_train"], metrics["num_test"], metrics["loader"]) == (64, 16, "cached")


def test_cli_writes_a_tree_and_refuses_to_overwrite_one(tmp_path):
    command = [sys.executable, "-m", "smec_fast", "synth-rafdb", str(tmp_path / "rafdb"), "--train", "12",
               "--test", "4", "--size", "32", "--workers", "1", "--report", str(tmp_path / "report.json")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "16 faces (12 train, 4 test, 32 px)" in first.stdout and (tmp_path / "report.json").is_file()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds a RAF-DB tree" in again.stderr
    bad = subprocess.run(command[:4] + [str(tmp_path / "other"), "--train", "0"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "--train must be at least 1" in bad.stderr


@pytest.mark.parametrize("train_size", [0, -3])
def test_empty_split_is_refused(tmp_path, train_size):
    with pytest.raises(ValueError, match="at least one training and one test face"):
        write_synthetic_rafdb(tmp_path / "x", train=train_size, test=4)
