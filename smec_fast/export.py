"""Exporting a trained model: a torch.export program (`.pt2`), ONNX, or TorchScript; and backbone files.

The exported network takes images normalised with ImageNet's mean and std, (B, 3, S, S) float32 with S the
training image size and any batch B, and returns `(logits (B, K), features (B, 512, h, w))`; the CAM of class j
is `einsum("bchw,c->bhw", features, weight[j])` with the classifier weight, which a sidecar JSON file holds
together with the class names, input size and normalisation. `smec_fast.load` reads a `.pt2` export back
(inference.ExportedNetwork).

TorchScript is deprecated by PyTorch (torch 2.14 warns that `torch.jit.trace` and `torch.jit.load` are): `pt2`
is what replaces it, and the `torchscript` format stays only while torch still supports it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from smec_fast.atomic import atomic_write_json
from smec_fast.errors import ConfigError, SmecFastError

if TYPE_CHECKING:
    import torch

    from smec_fast.inference import TrainedModel

# torch is imported where it is used, so that the command line reads these choices without loading it
FORMATS = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".ts"}  # format -> file suffix
BACKBONE_HEADS = ("keep", "drop")  # a backbone file with its classifier, or without


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
    """Write the model in `fmt` (pt2 | onnx | torchscript) to `out`, plus `out` + `.json` with its metadata."""
    import torch

    from smec_fast.data.images import IMAGENET_MEAN, IMAGENET_STD

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out)
    model = trained.model.cpu().eval()
    example = torch.zeros(2, 3, trained.image_size, trained.image_size)
    if fmt == "pt2":
        def write(tmp: Path) -> None:
            with torch.no_grad():
                program = torch.export.export(model, (example,),
                                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
            torch.export.save(program, str(tmp))
    elif fmt == "torchscript":
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
        "cam_weight": model.cam_weight.detach().tolist() if model.has_cam else None,
        "method": trained.config.method,
        "recipe": trained.config.recipe,
        "checkpoint": str(trained.path),
        "epoch": trained.epoch,
    })
    return out


BACKBONE_FORMAT = "smec_fast.backbone/1"


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes in name order: the same for the same weights on
    any machine, whatever the file's container."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_backbone(checkpoint: str | Path, out: str | Path, head: str = "keep") -> dict:
    """Write a run's network as a weight file to start other runs from (`--pretrained FILE`), and its card.

    The file holds the model's state dict (with the classifier unless `head` is "drop") and the class names, so
    that `--pretrained-head auto` keeps the classifier only for a dataset of the same classes. The card,
    `out` + `.json`, says where the weights come from: the run, its method, dataset, image size, epochs and
    test (and validation) accuracy. `checkpoint` is a run's checkpoint.pt (its last epoch) or, for a run with
    a validation split, its selected.pt (the epoch of best validation accuracy; the card's "final" figures
    are then that epoch's and `epoch_chosen_by` says so). Returns the card.
    """
    import datetime

    from smec_fast.version import __version__
    from smec_fast.atomic import atomic_torch_save
    from smec_fast.model import HEAD_KEYS
    from smec_fast.checkpoint import read_checkpoint

    if head not in BACKBONE_HEADS:
        raise ConfigError(f"--head must be one of {', '.join(BACKBONE_HEADS)}; got {head!r}")
    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    try:
        weights = {k: v for k, v in state["model"].items() if head == "keep" or k not in HEAD_KEYS}
        config, history, class_names = state["config"], state["history"], list(state["class_names"])
    except (KeyError, TypeError) as err:
        raise SmecFastError(f"{checkpoint}: incomplete checkpoint ({err})") from None
    last = history[-1] if history else {}
    card = {
        "format": BACKBONE_FORMAT, "source": str(checkpoint.resolve()), "method": config.get("method"),
        "dataset": config.get("dataset"), "data": config.get("data"), "image_size": config.get("image_size"),
        "epochs": state.get("epoch"), "epoch_chosen_by": state.get("chosen_by", "last epoch"),
        "noise_rate": config.get("noise_rate"), "seed": config.get("seed"),
        "pretrained": config.get("pretrained"), "class_names": class_names,
        "classifier": "included" if head == "keep" else "left out",
        "final_test_accuracy": last.get("test", {}).get("accuracy"),
        "best_test_accuracy": max((h["test"]["accuracy"] for h in history), default=None),
        "final_val_accuracy": (last.get("val") or {}).get("accuracy"),
        "parameters": sum(v.numel() for v in weights.values() if v.is_floating_point()),
        "weights_sha256": weights_digest(weights),
        "smec_fast": __version__,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(out)
    atomic_torch_save({"format": BACKBONE_FORMAT, "state_dict": weights, "class_names": class_names,
                       "card": card}, out)
    atomic_write_json(out.with_name(out.name + ".json"), card)
    return card
