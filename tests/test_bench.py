"""The benchmark scripts run and write the rows their READMEs promise (tiny sizes; no timing is checked)."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("with_data", [False, True])
def test_bench_train_rows(tmp_path, fer_subset, with_data):
    bench = load_script("bench_train")
    out = tmp_path / "train.json"
    argv = ["--device", "cpu", "--image-size", "32", "--batch", "4", "--modes", "plain", "eager",
            "--warmup", "0", "--steps", "1", "--repeats", "1", "--out", str(out)]
    if with_data:
        argv += ["--data", str(fer_subset), "--limit", "16", "--loader-steps", "1", "--num-workers", "0"]
        layouts = {False}
    else:
        argv += ["--channels-last", "off", "on"]  # the plain way is always NCHW
        layouts = {False, True}
    rows = bench.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(rows))
    kinds = {"random", "torch", "cached"} if with_data else {"random"}
    assert {(r["method"], r["mode"], r["data"], r["channels_last"]) for r in rows} == {
        (m, mode, d, nhwc) for m in ("ce", "smec") for mode in ("plain", "eager") for d in kinds
        for nhwc in (layouts if mode == "eager" else {False})
        if d == "random" or (d == "torch") == (mode == "plain")}
    for r in rows:
        for key in ("device", "image_size", "batch_size", "compiled", "step_ms", "images_per_s", "flops_per_step"):
            assert key in r, key
        assert r["image_size"] == 32 and r["batch_size"] == 4 and not r["compiled"] and r["step_ms"] > 0
        assert r["images_per_s"] == pytest.approx(4000 / r["step_ms"])
    flops = {(r["method"], r["mode"]): r["flops_per_step"] for r in rows if not r["channels_last"]}
    # One forward per view or one batched forward: the same arithmetic (the flop counter sees inside the
    # reference L_con but not inside the registered op, a 1e-4 share of the step). SMEC adds the half-images.
    assert flops["ce", "plain"] == flops["ce", "eager"]
    assert flops["smec", "plain"] == pytest.approx(flops["smec", "eager"], rel=1e-3)
    smec = [r for r in rows if r["method"] == "smec"]
    assert all(1.8 < r["flop_ratio_to_ce"] < 2.4 for r in smec)
    assert all("speedup_over_plain" in r for r in rows if r["mode"] == "eager")
