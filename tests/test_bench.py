"""The benchmark scripts run and write the rows their READMEs promise (tiny sizes; no timing is checked)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from smec_fast.precision import cpu_bf16_support, narrowest_bf16_cpu_width

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))  # the scripts import their shared helpers (benchenv)
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("with_data", [False, True])
def test_bench_train_rows(tmp_path, fer_subset, with_data):
    bench = load_script("bench_train")
    out = tmp_path / "train.json"
    earlier = [{"method": "ce", "mode": "plain", "device": "cuda", "git": "0000000"}]
    out.write_text(json.dumps(earlier))
    # SMEC's pieces wide enough for bf16 on this CPU (smec_fast.precision): 40 px, 72 px with AMX
    side = 2 * narrowest_bf16_cpu_width() + 6
    argv = ["--device", "cpu", "--image-size", str(side), "--batch", "4", "--modes", "plain", "eager",
            "--warmup", "0", "--steps", "1", "--repeats", "1", "--out", str(out)]
    if with_data:
        argv += ["--data", str(fer_subset), "--limit", "16", "--loader-steps", "1", "--num-workers", "0",
                 "--amp", "off", "--channels-last", "off"]
        ways = {("off", False)}
    else:
        # bf16 rows where bf16 is native: emulated, they take 5x this test's time (asking for them there is
        # test_bench_train_skips_emulated_bf16_unless_asked's)
        amps = ("off", "bf16") if cpu_bf16_support()[0] else ("off",)
        argv += ["--amp", *amps, "--channels-last", "off", "on"]
        ways = {(amp, nhwc) for amp in amps for nhwc in (False, True)}
    rows = bench.main(argv)
    assert json.loads(out.read_text()) == earlier + json.loads(json.dumps(rows))  # earlier rows kept, new after
    kinds = {"random", "torch", "cached"} if with_data else {"random"}
    assert {(r["method"], r["mode"], r["data"], r["amp"], r["channels_last"]) for r in rows} == {
        (m, mode, d, amp, nhwc) for m in ("ce", "smec") for mode in ("plain", "eager") for d in kinds
        for amp, nhwc in ways if d == "random" or (d == "torch") == (mode == "plain")}
    for r in rows:
        for key in ("device", "image_size", "batch_size", "compiled", "step_ms", "images_per_s", "flops_per_step",
                    "git", "torch", "cpu"):
            assert key in r, key
        assert r["image_size"] == side and r["batch_size"] == 4 and not r["compiled"] and r["step_ms"] > 0
        assert r["images_per_s"] == pytest.approx(4000 / r["step_ms"])
        assert r["cpu"]["native_bf16"] in (True, False)
    flops = {(r["method"], r["mode"]): r["flops_per_step"] for r in rows if not r["channels_last"] and r["amp"] == "off"}
    # One forward per view or one batched forward: the same arithmetic (the flop counter sees inside the
    # reference L_con but not inside the registered op, a 1e-4 share of the step). SMEC adds the half-images.
    assert flops["ce", "plain"] == flops["ce", "eager"]
    assert flops["smec", "plain"] == pytest.approx(flops["smec", "eager"], rel=1e-3)
    smec = [r for r in rows if r["method"] == "smec"]
    assert all(1.8 < r["flop_ratio_to_ce"] < 2.4 for r in smec)
    # every way but the reference is set against plain fp32 NCHW on the same kind of input
    reference = {(r["method"], r["data"] == "random") for r in rows
                 if r["mode"] == "plain" and r["amp"] == "off" and not r["channels_last"]}
    for r in rows:
        is_reference = r["mode"] == "plain" and r["amp"] == "off" and not r["channels_last"]
        assert ("speedup_over_plain" in r) == (not is_reference and (r["method"], r["data"] == "random") in reference)


def test_bench_train_skips_emulated_bf16_unless_asked(tmp_path, monkeypatch, capsys):
    from smec_fast import precision

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (False, "no AMX or AVX512-BF16 (patched)"))
    bench = load_script("bench_train")
    argv = ["--device", "cpu", "--image-size", "40", "--batch", "2", "--methods", "ce", "--modes", "eager",
            "--channels-last", "off", "--warmup", "0", "--steps", "1", "--repeats", "1", "--out", str(tmp_path / "t.json")]
    rows = bench.main(argv)
    assert [r["amp"] for r in rows] == ["off"] and not rows[0]["cpu"]["native_bf16"]
    assert "emulated-bf16 rows are skipped" in capsys.readouterr().out
    rows = bench.main([*argv, "--amp", "off", "bf16"])
    assert [r["amp"] for r in rows] == ["off", "bf16"]
    assert "skipped" not in capsys.readouterr().out


def test_bench_default_runs_the_candidates_side_by_side(tmp_path):
    bench = load_script("bench_default")
    out = tmp_path / "default.json"
    earlier = [{"candidate": "current", "kind": "native", "git": "0000000", "wall_s": 1.0}]
    out.write_text(json.dumps(earlier))
    rows = bench.main(["--candidates", "current", "48px-e8", "--kinds", "native", "--out", str(out), "--extra",
                       "--epochs 1 --synthetic-train-size 64 --synthetic-test-size 32 --num-workers 0"])
    assert json.loads(out.read_text()) == earlier + json.loads(json.dumps(rows))  # earlier rows kept, new ones after
    assert [r["candidate"] for r in rows] == ["current", "48px-e8"]
    assert [r["config"]["image_size"] for r in rows] == [64, 48] and all(r["config"]["epochs"] == 1 for r in rows)
    assert rows[1]["time_ratio_to_first"] == pytest.approx(rows[1]["wall_s"] / rows[0]["wall_s"])
    assert all(r["wall_s"] > 0 and r["l_con_first_epoch"] > 0 and "git" in r for r in rows)
    out.write_text("{}")
    with pytest.raises(SystemExit, match="not a JSON list of rows"):
        bench.main(["--candidates", "current", "--kinds", "native", "--out", str(out)])


def test_bench_train_skips_bf16_where_the_cpu_gets_it_wrong(tmp_path, capsys):
    bench = load_script("bench_train")
    rows = bench.main(["--device", "cpu", "--image-size", "32", "--batch", "4", "--methods", "smec", "--modes",
                       "eager", "--amp", "bf16", "--channels-last", "off", "--warmup", "0", "--steps", "1",
                       "--repeats", "1", "--out", str(tmp_path / "train.json")])
    assert rows == []  # the trainer refuses that precision here, so nothing is timed in it
    assert "smec 32 px eager bf16 skipped: --amp bf16 on the CPU" in capsys.readouterr().out


def test_check_compile_rows(tmp_path):
    check = load_script("check_compile")
    out = tmp_path / "compile.json"
    earlier = [{"method": "smec", "way": "compiled", "device": "cuda", "git": "0000000"}]
    out.write_text(json.dumps(earlier))
    rows = check.main(["--device", "cpu", "--methods", "ce", "--ways", "eager", "eager-bf16", "--image-size", "40",
                       "--batch-size", "16", "--out", str(out)])
    assert json.loads(out.read_text()) == earlier + json.loads(json.dumps(rows))  # earlier rows kept, new after
    by_way = {r["way"]: r for r in rows}
    assert set(by_way) == {"eager", "eager-bf16"} and by_way["eager-bf16"]["amp"] == "bf16"
    # fp32 rounding against float64 (measured 4e-6), and bf16's: every layer's activations rounded to 8 bits,
    # which batch norm's cancellation in the backward amplifies (measured worst 0.6, median 0.33 here; a
    # zero or garbage gradient scores 1 or more)
    assert by_way["eager"]["worst_rel_err"] < 1e-4
    assert by_way["eager"]["worst_rel_err"] < by_way["eager-bf16"]["worst_rel_err"] < 0.9
    assert by_way["eager-bf16"]["median_rel_err"] < 0.5


@pytest.mark.slow(seconds=27)
def test_pytest_benchmark_suite_runs_in_smoke_mode(tmp_path):
    """`pytest bench --smoke`: every benchmark runs once at tiny sizes and pytest-benchmark prints its tables
    and saves its JSON (the Triton ones are skipped without CUDA)."""
    import subprocess

    saved = tmp_path / "bench.json"
    # not a pytest-xdist worker's environment: pytest-benchmark would take itself for parallel and not time
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    result = subprocess.run([sys.executable, "-m", "pytest", "bench", "-q", "--smoke", "-p", "no:cacheprovider",
                             f"--benchmark-json={saved}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for group in ("consistency fwd+bwd b=2", "elr fwd+bwd b=2", "training step b=2"):
        assert f"benchmark '{group}'" in result.stdout
    import torch

    providers = ("torch", "compile", "triton") if torch.cuda.is_available() else ("torch", "compile")
    names = {b["name"] for b in json.loads(saved.read_text())["benchmarks"]}
    assert names == {f"test_fused_op[2-{op}-{p}]" for op in ("consistency", "elr") for p in providers} | {
        "test_training_step[2-ce]", "test_training_step[2-smec]"}


def test_bench_faces_rows(tmp_path, shared):
    from smec_fast.faces import detector_available

    if not detector_available():
        pytest.skip("needs facenet-pytorch")
    bench = load_script("bench_faces")
    out = tmp_path / "faces.json"
    assert bench.main(["--data", str(shared / "data" / "fer2013" / "val"), "--faces", "8", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["faces"] == 8 and 0 <= row["recall"] <= 1 and row["detect_photos_per_s"] > 0
    assert row["landmark_error"]["faces"] <= 8 and row["cpu"]["model"]
    assert sum(v["faces"] for v in row["recall_by_side"].values()) == 8
    with pytest.raises(SystemExit):  # MTCNN's figures are the top-level ones, so it must come first
        bench.main(["--faces", "8", "--detectors", "mediapipe"])
