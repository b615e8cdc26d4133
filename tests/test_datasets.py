from pathlib import Path

import pytest
import torch
from PIL import Image

from smec_fast.config import resolve_config
from smec_fast.data import SplitLoader, build_data, load_folder, load_rafdb, synthetic_split
from smec_fast.data.noise import parse_label_file
from smec_fast.data.rafdb import CLASS_NAMES
from smec_fast.data.synthetic import RAFDB_TRAIN_COUNTS, class_counts
from smec_fast.errors import DataError


@pytest.fixture(scope="session")
def rafdb_tree(tmp_path_factory, shared):
    """A RAF-DB-shaped tree: the real label file, and a small generated JPEG for every line."""
    root = tmp_path_factory.mktemp("rafdb")
    (root / "basic" / "EmoLabel").mkdir(parents=True)
    label_file = shared / "data" / "rafdb-labels" / "list_patition_label.txt"
    (root / "basic" / "EmoLabel" / "list_patition_label.txt").write_bytes(label_file.read_bytes())
    aligned = root / "basic" / "Image" / "aligned"
    aligned.mkdir(parents=True)
    tile = Image.new("RGB", (8, 8), (120, 90, 60))
    buffer = aligned / "_tile.jpg"
    tile.save(buffer, quality=90)
    data = buffer.read_bytes()
    buffer.unlink()
    for entry in parse_label_file(label_file, 7):
        (aligned / f"{Path(entry.name).stem}_aligned.jpg").write_bytes(data)
    return root


def test_rafdb_tree_loads_with_counts_and_class_order(rafdb_tree, shared):
    train, test = load_rafdb(rafdb_tree, "train"), load_rafdb(rafdb_tree / "basic", "test")
    assert (len(train), len(test)) == (12271, 3068)
    assert train.class_names == ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
    assert train.class_counts() == [1290, 281, 717, 4772, 1982, 705, 2524]
    assert test.class_counts() == [329, 74, 160, 1185, 478, 162, 680]
    assert train.names[0] == "train_00001.jpg" and train.paths[0].name == "train_00001_aligned.jpg"
    # label file says train_00001 is 5 (Sadness) -> index 4
    assert train.labels[0].item() == 4 and CLASS_NAMES[4] == "Sadness"
    images, labels, index = next(iter(SplitLoader(test.subset(torch.arange(4)), 32, 4, torch.device("cpu"),
                                                  train=False)))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == test.labels[:4].tolist()


def test_rafdb_with_noise_file_and_cap(rafdb_tree, shared):
    noise = shared / "data" / "rafdb-labels" / "noise02.txt"
    cfg = resolve_config(cli_values={"dataset": "rafdb", "data": str(rafdb_tree), "noise_file": str(noise)})
    data = build_data(cfg)
    assert data.noise.total == 12271 and 0.19 < data.noise.rate < 0.21
    capped = build_data(resolve_config(cli_values={"dataset": "rafdb", "data": str(rafdb_tree), "noise_rate": 0.5,
                                                   "max_train_samples": 1000, "max_test_samples": 100}))
    assert (len(capped.train), len(capped.test)) == (1000, 100)
    assert capped.noise.changed == 500


def test_rafdb_missing_image_names_file_and_line(tmp_path):
    (tmp_path / "basic" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "basic" / "Image" / "aligned").mkdir(parents=True)
    (tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\ntrain_00002.jpg 2\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "basic" / "Image" / "aligned" / "train_00001_aligned.jpg")
    with pytest.raises(DataError, match=r"list_patition_label.txt line 2: image .*train_00002_aligned.jpg not found"):
        load_rafdb(tmp_path, "train")
    with pytest.raises(DataError, match="not a RAF-DB folder"):
        load_rafdb(tmp_path / "basic" / "Image", "train")


def test_fer2013_folder_loads(shared):
    root = shared / "data" / "fer2013"
    train, test = load_folder(root, "train"), load_folder(root, "test")
    assert (len(train), len(test)) == (28709, 3589)
    assert train.class_names == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert train.class_counts() == [3995, 436, 4097, 7215, 4965, 4830, 3171]
    sample = test.subset(torch.tensor([0, 1000, 3000]))
    images, labels, _ = next(iter(SplitLoader(sample, 48, 3, torch.device("cpu"), train=False)))
    assert images.shape == (3, 3, 48, 48)
    # greyscale made 3-channel: the three channels carry the same pixels (before normalisation)
    raw = images * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nope", "train")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "train" / "a" / "x.png")
    with pytest.raises(DataError, match="Found no valid file for the classes b"):
        load_folder(tmp_path, "train")
    (tmp_path / "test" / "c").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "train" / "b" / "y.png")
    with pytest.raises(DataError, match="class folder not found"):
        load_folder(tmp_path, "test")


def test_synthetic_dataset_follows_rafdb_proportions_and_is_deterministic():
    train = synthetic_split("train", 1400, 32, seed=0)
    again = synthetic_split("train", 1400, 32, seed=0)
    test = synthetic_split("test", 300, 32, seed=0)
    assert train.images.shape == (1400, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert train.class_counts() == class_counts(1400, RAFDB_TRAIN_COUNTS)
    share = torch.tensor(train.class_counts()) / 1400
    expected = torch.tensor(RAFDB_TRAIN_COUNTS, dtype=torch.float) / sum(RAFDB_TRAIN_COUNTS)
    assert (share - expected).abs().max() < 1e-3
    assert not torch.equal(train.images[:300], test.images)
    assert len(set(train.names)) == 1400 and train.names[0] == "train_00001.jpg"


def test_training_loader_is_seeded_by_epoch_and_flips_half():
    split = synthetic_split("train", 64, 16, seed=0)
    loader = SplitLoader(split, 16, 16, torch.device("cpu"), train=True, seed=5)
    first = [idx.tolist() for _, _, idx in loader]
    assert [idx.tolist() for _, _, idx in loader] == first  # same epoch, same order
    loader.set_epoch(1)
    assert [idx.tolist() for _, _, idx in loader] != first
    assert sorted(sum(first, [])) == list(range(64))  # every sample once per epoch
    plain = SplitLoader(split, 16, 64, torch.device("cpu"), train=False)
    reference, _, _ = next(iter(plain))
    loader.set_epoch(0)
    flipped = 0
    for images, _, index in loader:
        for img, i in zip(images, index):
            if torch.equal(img, reference[i].flip(-1)) and not torch.equal(img, reference[i]):
                flipped += 1
            else:
                assert torch.equal(img, reference[i])
    assert 16 <= flipped <= 48
