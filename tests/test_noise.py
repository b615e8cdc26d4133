import pytest
import torch

from smec_fast.data.noise import (
    labels_from_file,
    parse_label_file,
    read_label_file,
    symmetric_noise,
    write_label_file,
)
from smec_fast.data.rafdb import CLASS_NAMES
from smec_fast.errors import DataError


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.45, 0.6, 0.9])
@pytest.mark.parametrize("n,k", [(1000, 7), (12271, 7), (37, 3), (5, 2)])
def test_symmetric_noise_changes_exactly_round_rn_labels(rate, n, k):
    clean = torch.randint(0, k, (n,))
    noisy = symmetric_noise(clean, rate, k, seed=3)
    changed = noisy != clean
    assert int(changed.sum()) == round(rate * n)
    assert noisy.min() >= 0 and noisy.max() < k


def test_symmetric_noise_is_reproducible_per_seed_and_uniform_over_other_classes():
    clean = torch.randint(0, 7, (20000,))
    a, b, c = (symmetric_noise(clean, 0.4, 7, seed=s) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # every corrupted sample lands on each of the 6 other classes about equally often
    offsets = ((a - clean) % 7)[a != clean]
    counts = torch.bincount(offsets, minlength=7)
    assert counts[0] == 0
    expected = offsets.numel() / 6
    assert (counts[1:].double() - expected).abs().max() < 5 * expected**0.5


def test_label_file_round_trip(tmp_path):
    names = [f"train_{i:05d}.jpg" for i in range(1, 11)]
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2])
    path = tmp_path / "noise.txt"
    write_label_file(path, names, labels)
    assert path.read_text().splitlines()[1] == "train_00002.jpg 2"
    assert read_label_file(path, 7) == dict(zip(names, labels.tolist()))


@pytest.mark.parametrize("content,message", [
    ("train_1.jpg 8\n", "line 1: label 8 is out of range 1..7"),
    ("train_1.jpg 1\ntrain_2.jpg x\n", "line 2: label 'x' is not an integer"),
    ("train_1.jpg 1\n\ntrain_2.jpg 2 3\n", "line 3: expected 'name label'"),
    ("train_1.jpg 1\ntrain_1.jpg 2\n", "line 2: train_1.jpg is listed twice"),
    ("\n\n", "no 'name label' lines"),
])
def test_malformed_label_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "labels.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        parse_label_file(path, 7)
    assert "labels.txt" in str(err.value)


def test_eac_noise_files_load_completely(shared):
    """EAC's noise01/02 look one line short to `wc -l`: their last line has no newline. All 12,271 load."""
    folder = shared / "data" / "rafdb-labels"
    clean_entries = [e for e in parse_label_file(folder / "list_patition_label.txt", 7) if e.name.startswith("train_")]
    names = [e.name for e in clean_entries]
    clean = torch.tensor([e.label for e in clean_entries])
    assert len(names) == 12271
    for file, rate in (("noise01.txt", 0.10), ("noise02.txt", 0.20), ("noise03.txt", 0.30)):
        raw = (folder / file).read_bytes()
        labels, report = labels_from_file(names, clean, folder / file, len(CLASS_NAMES))
        assert len(read_label_file(folder / file, 7)) == 12271
        assert report.missing_from_file == 0 and report.total == 12271
        assert abs(report.rate - rate) < 0.01, (file, report.rate)
        assert report.changed == int((labels != clean).sum())
        if file != "noise03.txt":
            assert raw.count(b"\n") == 12270 and not raw.endswith(b"\n")


def test_noise_file_missing_names_keep_clean_labels(tmp_path, caplog):
    names = ["a.jpg", "b.jpg", "c.jpg"]
    clean = torch.tensor([0, 1, 2])
    path = tmp_path / "n.txt"
    path.write_text("a.jpg 3\nc.jpg 3")  # b.jpg missing, no final newline
    labels, report = labels_from_file(names, clean, path, 7)
    assert labels.tolist() == [2, 1, 2]
    assert report.missing_from_file == 1 and report.changed == 1
    assert "lists 2 of 3 training images" in caplog.text


def test_noise_file_of_another_dataset_is_refused(tmp_path):
    path = tmp_path / "n.txt"
    path.write_text("x.jpg 1\ny.jpg 2\n")
    with pytest.raises(DataError, match="none of its 2 names is a training image"):
        labels_from_file(["a.jpg"], torch.tensor([0]), path, 7)
