"""Exporting a trained model to TorchScript or ONNX.

The exported network takes images normalised with ImageNet's mean and std, (B, 3, S, S) float32 with S the
training image size, and returns `(logits (B, K), features (B, 512, h, w))`; the CAM of class j is
`einsum("bchw,c->bhw", features, weight[j])` with the classifier weight, which a sidecar JSON file holds
together with the class names, input size and normalisation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from smec_fast.data.loader import IMAGENET_MEAN, IMAGENET_STD
from smec_fast.errors import ConfigError, SmecFastError
from smec_fast.inference import TrainedModel
from smec_fast.io import atomic_write_json

FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}


def _write_via_temp(path: Path, write) -> None:
    """Let `write(tmp_path)` produce the file, then move it into place atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_model(trained: TrainedModel, fmt: str, out: str | Path) -> Path:
    """Write the model in `fmt` (torchscript | onnx) to `out`, plus `out` + `.json` with its metadata."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out)
    model = trained.model.cpu().eval()
    example = torch.zeros(2, 3, trained.image_size, trained.image_size)
    if fmt == "torchscript":
        def write(tmp: Path) -> None:
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
            traced.save(str(tmp))
    else:
        def write(tmp: Path) -> None:
            try:
                import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
            except ImportError:
                raise SmecFastError("ONNX export needs the onnx and onnxscript packages: "
                                    "pip install onnx onnxscript") from None
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False,
                              input_names=["images"], output_names=["logits", "features"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    _write_via_temp(out, write)
    atomic_write_json(out.with_name(out.name + ".json"), {
        "format": fmt,
        "class_names": list(trained.class_names),
        "image_size": trained.image_size,
        "input": "RGB images scaled to [0, 1], then normalised with mean and std, (B, 3, S, S) float32",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "outputs": ["logits (B, K)", "features (B, 512, h, w)"],
        "cam_weight": model.cam_weight.detach().tolist(),
        "checkpoint": str(trained.path),
        "epoch": trained.epoch,
    })
    return out
