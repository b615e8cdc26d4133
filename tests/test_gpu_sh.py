"""bench/gpu.sh, the one GPU run: its dry run on the CPU, stage failures and cuts, and what it imports."""

import ast
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

# Under pytest-xdist these tests run in one worker: they share one dry run of gpu.sh.
pytestmark = [pytest.mark.xdist_group("gpu_sh"), pytest.mark.slow(seconds=70)]

REPO = Path(__file__).resolve().parents[1]
STAGES = {"env": "env.json", "kernel-tests": "kernels.json", "kernel-bench": "kernels.json", "train": "train.json",
          "compile-check": "compile_check.json", "data": "loaders.json", "loaders": "loaders.json",
          "e2e": "e2e.json"}


@pytest.fixture(scope="session")
def dry_run(tmp_path_factory):
    """One dry run with one stage made to fail and one made to hang past its budget after doing its work."""
    out = tmp_path_factory.mktemp("gpu-out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_SH_FAIL": "kernel-bench",
           "GPU_SH_HANG": "compile-check", "GPU_SH_HANG_BUDGET": "12"}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run"], env=env, capture_output=True,
                            text=True, timeout=600)
    return out, result


def test_every_stage_writes_its_summary_and_rows(dry_run):
    out, result = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # at most 8 files come back from the GPU machine, none deeper than two folders
    assert sorted(p.name for p in out.iterdir()) == sorted({*STAGES.values(), "summary.txt", "logs.tar.gz"})
    summary = (out / "summary.txt").read_text()
    headers = [line for line in summary.splitlines() if line.startswith("== ")]
    assert [h.split(":")[0][3:] for h in headers] == list(STAGES)
    for stage, file in STAGES.items():
        entry = json.loads((out / file).read_text())[stage]
        assert {"status", "rc", "seconds", "budget_s", "command", "rows"} <= set(entry)
        if stage not in ("kernel-bench", "compile-check"):
            assert entry["status"] == "ok" and entry["rc"] == 0, (stage, entry)
            assert entry["rows"], stage
    rows = {stage: json.loads((out / file).read_text())[stage]["rows"] for stage, file in STAGES.items()}
    assert rows["env"][0]["device"] == "cpu" and rows["env"][0]["copy_bandwidth_gbs"] > 0
    assert {r["outcome"] for r in rows["kernel-tests"]} == {"passed"} and len(rows["kernel-tests"]) == 2
    assert {(r["method"], r["mode"]) for r in rows["train"]} == {(m, w) for m in ("ce", "smec") for w in ("plain", "eager")}
    assert rows["data"][0]["files"] == 192
    assert {r["loader"] for r in rows["loaders"]} >= {"torch", "cached"}
    e2e = {r["way"]: r for r in rows["e2e"]}
    assert set(e2e) == {"default", "plain"} and all(r["rc"] == 0 and r["tflops"] > 0 for r in e2e.values())
    assert e2e["plain"]["loader"] == "torch" and e2e["plain"]["kernels"] == "reference"
    assert e2e["default"]["num_train"] == 128  # trained through the rafdb dataset path on the generated JPEGs
    for row in e2e.values():  # the bf16 matmul rate bounds bf16 runs only; an fp32 run gets no share of it
        assert (row["share_of_matmul_rate"] is not None) == (row["precision"]["amp"] == "bf16"), row["precision"]


def test_a_failed_stage_is_recorded_and_the_next_runs(dry_run):
    out, _ = dry_run
    entry = json.loads((out / "kernels.json").read_text())["kernel-bench"]
    assert entry["status"] == "failed" and entry["rc"] == 3
    assert entry["log_tail"] == ["this stage was made to fail (GPU_SH_FAIL)"]
    assert "== kernel-bench: FAILED (exit 3)" in (out / "summary.txt").read_text()
    assert json.loads((out / "train.json").read_text())["train"]["status"] == "ok"


def test_a_stage_past_its_budget_is_cut_keeping_its_rows(dry_run):
    out, _ = dry_run
    entry = json.loads((out / "compile_check.json").read_text())["compile-check"]
    assert entry["status"] == "timed out" and entry["budget_s"] == 12 and entry["seconds"] < 30
    assert entry["rows"] and entry["rows"][0]["way"] == "eager"  # written before the hang
    assert "== compile-check: TIMED OUT after 12 s" in (out / "summary.txt").read_text()
    assert json.loads((out / "loaders.json").read_text())["data"]["status"] == "ok"


def test_the_log_archive_holds_every_stage(dry_run):
    out, _ = dry_run
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"logs/{stage}.{kind}" for stage in STAGES for kind in ("out", "err")} <= names


# Python packages on the GPU machine's image (the device tool's KINDS.md, read 2026-11-17), by import name.
# nvidia.dali is not among them: the loaders import it only where it is installed.
GPU_MACHINE_MODULES = {"torch", "torchvision", "triton", "numpy", "PIL", "psutil", "yaml", "tqdm", "matplotlib",
                       "tensorboard", "pytest", "onnx", "onnxscript", "onnxruntime"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_code_gpu_sh_runs_imports_only_what_the_gpu_machine_has():
    files = [*REPO.glob("smec_fast/**/*.py"), *REPO.glob("kernels/*.py"), *REPO.glob("bench/*.py"),
             REPO / "tests" / "conftest.py", REPO / "tests" / "test_kernels_triton.py",
             REPO / "tests" / "test_reference_ops.py"]
    local = {p.stem for p in REPO.glob("bench/*.py")} | {"smec_fast", "kernels"}
    third_party = set().union(*map(_imports, files)) - set(sys.stdlib_module_names) - local
    # Optional packages the GPU machine lacks, each imported by one module inside the functions that need it:
    # DALI (its loader), facenet-pytorch and PyAV (faces in photos and videos, which gpu.sh does not run),
    # tifffile and pillow-heif (float TIFFs and HEIC photos, which gpu.sh does not read) and MediaPipe (the
    # detector bench_faces.py measures against MTCNN, installed by hand).
    optional = {"nvidia": "smec_fast/data/dali.py", "facenet_pytorch": "smec_fast/faces.py",
                "av": "smec_fast/media.py", "tifffile": "smec_fast/data/images.py",
                "pillow_heif": "smec_fast/data/images.py", "mediapipe": "bench/bench_faces.py"}
    assert third_party - set(optional) <= GPU_MACHINE_MODULES, third_party - GPU_MACHINE_MODULES
    for module, user in optional.items():
        users = [p.relative_to(REPO).as_posix() for p in files if module in _imports(p)]
        assert users == [user], (module, users)
        top_level = {alias.name.split(".")[0] for node in ast.parse((REPO / user).read_text()).body
                     if isinstance(node, ast.Import) for alias in node.names}
        top_level |= {node.module.split(".")[0] for node in ast.parse((REPO / user).read_text()).body
                      if isinstance(node, ast.ImportFrom) and node.module}
        assert module not in top_level, f"{user} imports {module} at module level"
