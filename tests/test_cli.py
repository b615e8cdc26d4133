"""Using a trained model from the command line: evaluate, predict, export, and every kind of bad input."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision
from PIL import Image

from smec_fast.cli import main
from smec_fast.config import resolve_config
from smec_fast.data.images import decode_image_file, normalize
from smec_fast.inference import load_trained_model
from smec_fast.checkpoint import read_checkpoint
from smec_fast.trainer import train

TINY = dict(image_size=32, synthetic_train_size=160, synthetic_test_size=64, batch_size=32, epochs=2,
            progress=False, num_workers=0)
# One worker under pytest-xdist for the tests that read `run`: it is trained once.
USES_RUN = pytest.mark.xdist_group("cli_run")


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A two-epoch ELR run; the tests that use it carry USES_RUN."""
    out = tmp_path_factory.mktemp("trained") / "run"
    metrics = train(resolve_config(cli_values={**TINY, "out": str(out), "method": "elr"}))
    return out, metrics


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    """Images of every mode and odd sizes: greyscale, RGBA PNG, palette, tiny, large, in a nested folder."""
    root = tmp_path_factory.mktemp("faces")
    (root / "nested").mkdir()
    rng = torch.Generator().manual_seed(1)

    def noise(h, w, c):
        return torch.randint(0, 256, (h, w, c), generator=rng, dtype=torch.uint8).numpy()

    Image.fromarray(noise(48, 48, 1)[..., 0], "L").save(root / "grey.jpg")
    Image.fromarray(noise(37, 53, 4), "RGBA").save(root / "alpha.png")
    Image.fromarray(noise(20, 30, 3)).convert("P").save(root / "palette.png")
    Image.fromarray(noise(1200, 1500, 3)).save(root / "nested" / "large.jpg", quality=85)
    Image.fromarray(noise(7, 5, 3)).save(root / "nested" / "tiny.bmp")
    return root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@USES_RUN
def test_evaluate_reproduces_the_final_test_metrics(run, capsys, tmp_path):
    out, metrics = run
    code, stdout, err = run_cli(capsys, "evaluate", out / "checkpoint.pt", "--out", tmp_path / "eval",
                                "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["accuracy"] == metrics["final_accuracy"]
    assert result["balanced_accuracy"] == metrics["final_balanced_accuracy"]
    assert result["per_class_accuracy"] == metrics["per_class_accuracy"]
    assert result["confusion_matrix"] == metrics["confusion_matrix"]
    assert result["method"] == "elr" and result["num_images"] == 64 and result["epoch"] == 2
    with Image.open(tmp_path / "eval" / "confusion_matrix.png") as png:
        assert png.format == "PNG" and png.width > 200


@USES_RUN
def test_evaluate_scores_the_subset_named_by_subset_or_its_old_name(run, capsys, tmp_path, caplog):
    out, metrics = run
    code, _, err = run_cli(capsys, "evaluate", out / "checkpoint.pt", "--subset", "train", "--out", tmp_path / "new",
                           "--device", "cpu")
    assert code == 0, err
    train_result = json.loads((tmp_path / "new" / "evaluation.json").read_text())
    assert train_result["split"] == "train" and train_result["num_images"] == metrics["num_train"]
    with caplog.at_level("WARNING"):
        code, _, err = run_cli(capsys, "evaluate", out / "checkpoint.pt", "--split", "train", "--out",
                               tmp_path / "old", "--device", "cpu")
    assert code == 0, err
    assert "--split is the old name of --subset" in caplog.text
    assert json.loads((tmp_path / "old" / "evaluation.json").read_text()) == train_result
    code, _, err = run_cli(capsys, "evaluate", out / "checkpoint.pt", "--split", "train", "--subset", "test")
    assert code == 2 and "name different subsets" in err


def test_the_command_line_starts_without_torch():
    """`smec-fast --help` and the parsers read choices and options without loading torch (2 s on the CPU)."""
    import subprocess
    import sys

    code = ("import sys; from smec_fast.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@USES_RUN
def test_predict_accepts_any_image_and_matches_the_model(run, face_folder, capsys, tmp_path):
    out, _ = run
    csv_path = tmp_path / "pred.csv"
    code, stdout, err = run_cli(capsys, "predict", out / "checkpoint.pt", face_folder, "--out", csv_path,
                                "--cam", tmp_path / "cams", "--device", "cpu")
    assert code == 0, err
    rows = list(csv.DictReader(csv_path.open()))
    trained = load_trained_model(out / "checkpoint.pt")
    names = list(trained.class_names)
    assert [os.path.basename(r["file"]) for r in rows] == ["alpha.png", "grey.jpg", "large.jpg", "tiny.bmp",
                                                           "palette.png"]
    for row in rows:
        probs = torch.tensor([float(row[n]) for n in names])
        assert abs(probs.sum().item() - 1) < 1e-4
        assert row["predicted"] == names[int(probs.argmax())]
        with torch.no_grad():
            logits, _ = trained.model(normalize(decode_image_file(row["file"], 32)[None]))
        torch.testing.assert_close(probs, torch.softmax(logits, 1)[0], atol=2e-6, rtol=0)
    cams = sorted(p.relative_to(tmp_path / "cams").as_posix() for p in (tmp_path / "cams").rglob("*.png"))
    assert cams == ["alpha.png.png", "grey.jpg.png", "nested/large.jpg.png", "nested/tiny.bmp.png",
                    "palette.png.png"]
    with Image.open(tmp_path / "cams" / "nested" / "large.jpg.png") as png:
        assert png.size == (512, 410)  # long side capped at 512, aspect kept


def test_a_faces_cam_is_painted_where_the_face_lies_in_the_photo():
    """face_cam_overlay warps the CAM from the aligned frame back into the photo: a CAM with one hot cell must
    light the photo where that cell of the frame lies, and only the warped frame's pixels may change."""
    import math

    from smec_fast.data.align import ALIGNED_SIZE, TEMPLATE
    from smec_fast.inference import face_cam_overlay

    scale, angle, shift = 1.3, math.radians(25), torch.tensor([60.0, 40.0], dtype=torch.float64)
    a = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                             dtype=torch.float64)
    landmarks = TEMPLATE @ a.T + shift  # the template moved into the photo (pixel positions)
    photo = torch.full((3, 240, 220), 128, dtype=torch.uint8)
    cam_map = torch.zeros(7, 7)
    cam_map[2, 4] = 3.0  # bilinear upsampling makes a tent around the cell's centre, inside the frame
    out = face_cam_overlay(photo, landmarks, cam_map)
    changed = (out != photo).any(0)
    red = ((out[0].double() - 0.5 * 128) / 0.5 / 255).clamp(min=0) * changed  # jet's red: heat above ~0.35
    ys, xs = torch.meshgrid(torch.arange(240.0), torch.arange(220.0), indexing="ij")
    found = torch.stack([(red * xs).sum(), (red * ys).sum()]).double() / red.sum()  # centre of the red blob
    cell = torch.tensor([4.5, 2.5], dtype=torch.float64) * ALIGNED_SIZE / 7 - 0.5  # frame pixel position
    assert torch.linalg.norm(found - (cell @ a.T + shift)) < 0.5
    ys, xs = torch.nonzero(changed, as_tuple=True)
    frame = (torch.stack([xs, ys], 1).double() + 0.5 - shift - 0.5) @ torch.linalg.inv(a).T + 0.5
    assert ((frame > -1.5) & (frame < ALIGNED_SIZE + 1.5)).all()  # corner coordinates of the frame
    area = (ALIGNED_SIZE * scale) ** 2
    assert abs(changed.sum().item() - area) < 4 * ALIGNED_SIZE * scale  # the whole frame, give or take its edge


@USES_RUN
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_gives_the_checkpoints_outputs(run, capsys, tmp_path, fmt):
    out, _ = run
    target = tmp_path / f"model.{fmt}"
    code, _, err = run_cli(capsys, "export", out / "checkpoint.pt", "--format", fmt, "--out", target)
    assert code == 0, err
    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["image_size"] == 32 and len(meta["class_names"]) == 7
    trained = load_trained_model(out / "checkpoint.pt")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, feat = trained.model(x)
    if fmt == "torchscript":
        loaded = torch.jit.load(str(target))
        got_logits, got_feat = loaded(x)
        tol = dict(atol=1e-6, rtol=1e-6)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(target))
        got_logits, got_feat = (torch.from_numpy(a) for a in session.run(None, {"images": x.numpy()}))
        tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_logits, logits, **tol)
    torch.testing.assert_close(got_feat, feat, **tol)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- bad input -------------------------------------------------------------------------------------------

def _checkpoint_variant(run, tmp_path, name, edit):
    state = read_checkpoint(run[0] / "checkpoint.pt")
    edit(state)
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def bad_cases(run, face_folder, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad")
    ckpt = run[0] / "checkpoint.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    foreign = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), foreign)
    eight = _checkpoint_variant(run, tmp_path, "eight.pt", lambda s: s["model"].update(
        {"fc.weight": torch.zeros(8, 512), "fc.bias": torch.zeros(8)}))
    other_arch = _checkpoint_variant(run, tmp_path, "arch.pt", lambda s: s.update(
        model=torchvision.models.resnet34(num_classes=7).state_dict()))
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    good = face_folder / "grey.jpg"
    (broken / "half.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text"
    text.mkdir()
    (text / "notes.png").write_text("this is not an image\n")
    two_class = tmp_path / "two_class"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (two_class / split / cls).mkdir(parents=True)
            Image.new("L", (8, 8)).save(two_class / split / cls / "x.png")
    out_csv = tmp_path / "out.csv"
    return tmp_path, {
        "missing checkpoint": (["evaluate", tmp_path / "nope.pt"], "nope.pt: file not found"),
        "folder as checkpoint": (["evaluate", tmp_path], "is a folder, not a checkpoint file"),
        "truncated checkpoint": (["evaluate", truncated], "truncated.pt: not a readable checkpoint"),
        "foreign checkpoint": (["export", foreign, "--format", "onnx"], "resnet50.pt: not a smec_fast checkpoint"),
        "class count": (["predict", eight, face_folder, "--out", out_csv], "weights do not fit a ResNet-18 with 7"),
        "architecture": (["evaluate", other_arch], "arch.pt: weights do not fit"),
        "other classes": (["evaluate", ckpt, "--dataset", "folder", "--data", two_class], "has classes a, b but"),
        "layout": (["evaluate", ckpt, "--dataset", "rafdb", "--data", two_class], "is not a RAF-DB folder"),
        "dataset without data": (["evaluate", ckpt, "--dataset", "rafdb"], "--data is required"),
        "missing images": (["predict", ckpt, tmp_path / "none", "--out", out_csv], "none: no such file or folder"),
        "empty folder": (["predict", ckpt, empty, "--out", out_csv], "empty: no image files"),
        "truncated jpeg": (["predict", ckpt, broken, "--out", out_csv], "half.jpg: cannot decode image"),
        "non-image": (["predict", ckpt, text, "--out", out_csv], "notes.png: cannot decode image"),
        "bad batch size": (["predict", ckpt, face_folder, "--out", out_csv, "--batch-size", "0"],
                           "--batch-size must be at least 1"),
        "bad format": (["export", ckpt, "--format", "xyz"], "invalid choice: 'xyz'"),
        "bad train option": (["train", "--lr", "-1"], "--lr must be positive"),
        "bad train value": (["train", "--epochs", "1.5"], "epochs must be an integer"),
        "missing positional": (["predict", ckpt], "the following arguments are required: images"),
    }


CASES = ["missing checkpoint", "folder as checkpoint", "truncated checkpoint", "foreign checkpoint", "class count",
         "architecture", "other classes", "layout", "dataset without data", "missing images", "empty folder",
         "truncated jpeg", "non-image", "bad batch size", "bad format", "bad train option", "bad train value",
         "missing positional"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_with_one_clear_line(bad_cases, capsys, case):
    tmp_path, cases = bad_cases
    argv, expected = cases[case]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("smec-fast: error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out.csv").exists()
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="file not found"):
        main(["evaluate", str(tmp_path / "nope.pt"), "--debug"])


@USES_RUN
def test_fuzzed_images(run, face_folder, tmp_path, capsys):
    """Random bytes, some behind real JPEG/PNG signatures: a clean error, or skipped with --skip-bad-images."""
    rng = random.Random(0)
    fuzz = tmp_path / "fuzz"
    fuzz.mkdir()
    headers = [b"", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"BM"]
    for i in range(24):
        data = headers[i % len(headers)] + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 3000)))
        (fuzz / f"f{i:02d}{['.jpg', '.png', '.webp', '.bmp'][i % 4]}").write_bytes(data)
    ckpt = run[0] / "checkpoint.pt"
    out_csv = tmp_path / "pred.csv"
    code, _, err = run_cli(capsys, "predict", ckpt, fuzz, "--out", out_csv)
    assert code == 2 and "cannot decode image" in err and "Traceback" not in err and not out_csv.exists()
    code, _, err = run_cli(capsys, "predict", ckpt, fuzz, "--out", out_csv, "--skip-bad-images")
    assert code == 2 and "none of its 24 image files could be read" in err and not out_csv.exists()
    for name in ("grey.jpg", "alpha.png"):
        (fuzz / name).write_bytes((face_folder / name).read_bytes())
    code, stdout, err = run_cli(capsys, "predict", ckpt, fuzz, "--out", out_csv, "--skip-bad-images")
    assert code == 0, err
    assert [os.path.basename(r["file"]) for r in csv.DictReader(out_csv.open())] == ["alpha.png", "grey.jpg"]
    assert "24 unreadable images skipped" in stdout


# --- interrupted training ---------------------------------------------------------------------------------

KILL_RUN = ["--image-size", "32", "--synthetic-train-size", "160", "--synthetic-test-size", "64", "--batch-size",
            "16", "--epochs", "3", "--noise-rate", "0.3", "--progress", "false", "--num-workers", "0"]


def _train_process(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "smec_fast", "train", "--out", str(out), *KILL_RUN, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _comparable(metrics):
    drop = {"train_time_s", "environment", "config", "throughput"}  # timings and where it ran
    out = {k: v for k, v in metrics.items() if k not in drop}
    out["history"] = [{k: v for k, v in h.items() if k not in ("time_s", "throughput")} for h in metrics["history"]]
    return out


@pytest.mark.slow(seconds=50)
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    full = _train_process(tmp_path / "full")
    assert full.wait(timeout=600) == 0, full.stdout.read()

    victim = _train_process(tmp_path / "cut")
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 600
    while not checkpoint.exists():  # written atomically at the end of epoch 1
        assert victim.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    first_epoch = read_checkpoint(checkpoint)["history"][0]["time_s"]
    time.sleep(first_epoch / 2)  # well inside epoch 2
    assert victim.poll() is None, "the run ended before it could be interrupted"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert read_checkpoint(checkpoint)["epoch"] < 3
    assert not (tmp_path / "cut" / "metrics.json").exists()

    resumed = _train_process(tmp_path / "cut", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert _comparable(b) == _comparable(a)
