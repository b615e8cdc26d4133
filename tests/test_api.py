"""The Python API (smec_fast.load, predict, train, sweep): the same answers as the command line, every kind of
input, the .pt2 export read back, and bad input answered with the project's errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import smec_fast
from smec_fast.cli import main
from smec_fast.data.images import decode_rgb

# One worker under pytest-xdist: the tests share the trained checkpoint.
pytestmark = pytest.mark.xdist_group("api")

TINY = dict(image_size=32, synthetic_train_size=64, synthetic_test_size=16, batch_size=16, epochs=1,
            progress=False, num_workers=0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A one-epoch run through the API, and the metrics train() returned."""
    out = tmp_path_factory.mktemp("api") / "run"
    metrics = smec_fast.train(**TINY, out=str(out))
    return out, metrics


@pytest.fixture(scope="session")
def pictures(tmp_path_factory) -> Path:
    """Image files of several kinds and sizes, one of them turned by its EXIF orientation."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(2)
    for i, (h, w) in enumerate([(40, 40), (48, 36), (32, 32)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"colour{i}.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(root / "turned.jpg", exif=exif.tobytes())
    return root


def cli_probabilities(checkpoint: Path, images: Path, tmp_path: Path) -> dict[str, list[float]]:
    out = tmp_path / "cli.csv"
    assert main(["predict", str(checkpoint), str(images), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    classes = list(rows[0])[2:]
    return {Path(r["file"]).name: [float(r[c]) for c in classes] for r in rows}


def test_train_returns_what_metrics_json_holds(trained):
    out, metrics = trained
    assert json.loads(json.dumps(metrics)) == json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["config"]["image_size"] == 32


def test_predict_reads_every_kind_of_input_as_the_command_line_does(trained, pictures, tmp_path):
    out, _ = trained
    expected = cli_probabilities(out / "checkpoint.pt", pictures, tmp_path)
    model = smec_fast.load(out / "checkpoint.pt", device="cpu")
    assert model.classes == tuple(json.loads((out / "metrics.json").read_text())["class_names"])
    assert model.image_size == 32
    files = sorted(pictures.iterdir())
    names = [f.name for f in files]

    def check(results, which):
        assert len(results) == len(which)
        for result, name in zip(results, which):
            got = [result.probabilities[c] for c in model.classes]
            assert got == pytest.approx(expected[name], abs=2e-6), name  # the CSV's six decimals
            assert result.label == model.classes[int(np.argmax(got))]

    check(model.predict([str(f) for f in files]), names)  # str paths
    check(model.predict(files), names)  # Path objects
    check([model.predict(f)[0] for f in files], names)  # one at a time
    check(model.predict([Image.open(f) for f in files]), names)  # PIL images, EXIF orientation included
    arrays = [np.asarray(decode_rgb(f)) for f in files]
    check(model.predict(arrays), names)  # (H, W, 3) uint8
    grey = names.index("grey.png")
    check(model.predict(np.asarray(Image.open(files[grey]))), ["grey.png"])  # (H, W) uint8
    tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays]
    check(model.predict(tensors), names)  # (C, H, W) uint8
    check(model.predict([t.float() / 255 for t in tensors]), names)  # (C, H, W) float in [0, 1]
    same_size = [i for i, a in enumerate(arrays) if a.shape == (40, 40, 3)]
    check(model.predict(torch.stack([tensors[i] for i in same_size])), [names[i] for i in same_size])  # (B, C, H, W)
    mixed = model.predict([str(files[0]), arrays[1], tensors[2], Image.open(files[3])])
    check(mixed, names[:4])
    assert mixed[1].source == "<input 0>" and mixed[0].source == str(files[0])
    with_cam = model.predict(files[0], cam=True)[0]
    assert with_cam.cam is not None and with_cam.cam.shape == (1, 1) and with_cam.cam.dtype == np.float32
    json.dumps([r.to_dict() for r in model.predict(files, cam=True)])  # plain values all through


def test_pt2_export_round_trip_matches_the_checkpoint(trained, pictures, tmp_path):
    out, _ = trained
    exported = tmp_path / "model.pt2"
    assert main(["export", str(out / "checkpoint.pt"), "--format", "pt2", "--out", str(exported)]) == 0
    meta = json.loads((tmp_path / "model.pt2.json").read_text())
    assert meta["format"] == "pt2" and meta["image_size"] == 32 and meta["method"] == "smec"
    checkpoint = smec_fast.load(out / "checkpoint.pt", device="cpu")
    program = smec_fast.load(exported, device="cpu")
    assert program.classes == checkpoint.classes and program.image_size == 32
    files = sorted(pictures.iterdir())
    for batch in (files[:1], files):  # the batch dimension is dynamic
        for a, b in zip(checkpoint.predict(batch, cam=True), program.predict(batch, cam=True)):
            assert a.label == b.label
            assert [a.probabilities[c] for c in a.probabilities] == pytest.approx(
                [b.probabilities[c] for c in b.probabilities], abs=1e-5)  # fp32, the same graph
            np.testing.assert_allclose(a.cam, b.cam, atol=1e-4, rtol=1e-4)


def test_bad_input_raises_the_projects_errors_and_writes_nothing(trained, tmp_path):
    out, _ = trained
    model = smec_fast.load(out / "checkpoint.pt", device="cpu")
    cases = [
        (lambda: smec_fast.load(tmp_path / "missing.pt"), smec_fast.CheckpointError, "missing.pt: file not found"),
        (lambda: smec_fast.load(tmp_path / "missing.pt2"), smec_fast.CheckpointError, "missing.pt2.json is missing"),
        (lambda: model.predict(42), smec_fast.ConfigError, "cannot read an input of type int"),
        (lambda: model.predict(np.zeros((4, 4, 2), np.uint8)), smec_fast.DataError, r"<input 0>: an image array is"),
        (lambda: model.predict(torch.zeros(2, 8, 8)), smec_fast.DataError, "1, 3 or 4 channels"),
        (lambda: model.predict(tmp_path / "nope.jpg"), smec_fast.DataError, "nope.jpg: cannot read image"),
        (lambda: model.predict([], batch_size=0), smec_fast.ConfigError, "batch_size must be at least 1"),
        (lambda: smec_fast.train(epochs="two", out=str(tmp_path / "a")), smec_fast.ConfigError,
         "train\\(\\): epochs must be an integer"),
        (lambda: smec_fast.train(lr_decays=0.9, out=str(tmp_path / "b")), smec_fast.ConfigError,
         "train\\(\\): unknown option 'lr_decays' \\(did you mean 'lr_decay'\\?\\)"),
        (lambda: smec_fast.train(dataset="folder", data=str(tmp_path / "no-faces"), out=str(tmp_path / "c")),
         smec_fast.DataError, "no-faces"),
        (lambda: smec_fast.sweep(methods="ce,magic", noise_rates=[0.2], out=tmp_path / "d"), smec_fast.ConfigError,
         r"^sweep\(\) methods: unknown method 'magic'"),
        (lambda: smec_fast.sweep(methods="ce", noise_rates=[0.2], seeds="one", out=tmp_path / "f"),
         smec_fast.ConfigError, r"^sweep\(\) seeds must be a comma-separated list of integers, got 'one'"),
        (lambda: smec_fast.read_sweep(tmp_path / "e"), smec_fast.DataError, "sweep.json: no such file"),
        (lambda: smec_fast.sweep(methods="ce", noise_rates=[0.2], reference="smec", out=tmp_path / "f"),
         smec_fast.ConfigError, r"^sweep\(\) reference: no variant is labelled 'smec' \(labels: ce\)"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind, match=message):
            call()
    assert issubclass(kind, smec_fast.SmecFastError)
    assert not any((tmp_path / name).exists() for name in "abcdef")  # nothing written by a failed call
    unreadable = tmp_path / "broken.png"
    unreadable.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (result,) = model.predict(unreadable, skip_bad=True)
    assert result.label is None and "broken.png: cannot decode image" in result.problem


def test_sweep_runs_a_grid_and_read_sweep_gives_its_cells(tmp_path):
    table = smec_fast.sweep(methods=["ce", "elr"], noise_rates=[0.2], seeds=[0], out=tmp_path / "grid",
                            **{**TINY, "epochs": 1})
    cells = smec_fast.read_sweep(tmp_path / "grid")
    assert [c["label"] for c in cells] == ["ce", "elr"] == [c["label"] for c in table["cells"]]
    assert cells == json.loads(json.dumps(table["cells"]))
    assert table["reference"] == "elr" and "| ce | 20 | 0 |" in (tmp_path / "grid" / "table.md").read_text()


def test_the_api_is_what_the_package_exports():
    assert set(smec_fast.__all__) >= {"load", "train", "sweep", "read_sweep", "FerModel", "ImageResult",
                                      "FaceResult", "PhotoResult", "SmecFastError", "TrainConfig"}
    for name in smec_fast.__all__:
        assert getattr(smec_fast, name) is not None, name
    code = "import sys, smec_fast; assert 'torch' not in sys.modules"
    import subprocess

    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # `import smec_fast` stays light
