"""The Python API: load a trained model and use it on any picture; train and sweep as the command line does.

    import smec_fast

    model = smec_fast.load("runs/mine/selected.pt")           # a checkpoint, or a .pt2 export
    for photo in model.predict(["group.jpg", "phone.heic"], detect=True):
        for face in photo.faces:
            print(photo.source, face.box, face.label, face.probabilities[face.label])

    metrics = smec_fast.train(dataset="folder", data="faces", epochs=30, out="runs/mine")
    table = smec_fast.sweep(methods="ce,smec", noise_rates=[0.2, 0.4], seeds=[0, 1], out="runs/sweep")

The command line is a thin layer over these calls: `smec-fast predict` is `load(...).predict(...)` (with
`--detect`, `load(...).predict_media(...)`), `smec-fast train` is `train(...)`, `smec-fast sweep` is `sweep(...)`.
Bad input raises smec_fast.SmecFastError (ConfigError, DataError, CheckpointError), whose message names what is
wrong, as the command line prints it; files are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence, Union, overload

import numpy as np

from smec_fast.config import TrainConfig, load_config_file, option_values, resolve_config
from smec_fast.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from smec_fast.inference import TrainedModel
    from smec_fast.media import MediaReport

# What predict reads: a file path, a PIL image, a numpy (H, W) or (H, W, C) array, a (C, H, W) or (B, C, H, W)
# tensor (uint8 pixels, or float pixels in [0, 1]), or a list of any of these.
ImageInput = Union[str, Path, "Image.Image", np.ndarray, "torch.Tensor"]


@dataclass
class ImageResult:
    """The model's answer for one image: its class and the probability of every class, by name."""

    source: str  # the file, or "<input N>" for an image given in memory
    label: str | None  # the predicted class; None where the image could not be read (`problem`)
    probabilities: dict[str, float] = field(default_factory=dict)
    cam: np.ndarray | None = None  # (h, w) float32 CAM of the predicted class, where asked
    problem: str | None = None  # why the image could not be read (with skip_bad=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON or pandas (the CAM as nested lists)."""
        out = asdict(self)
        out["cam"] = None if self.cam is None else self.cam.tolist()
        return out


@dataclass
class FaceResult:
    """One face found in a picture: where it is (in the picture as displayed), its class and probabilities."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    landmarks: dict[str, tuple[float, float]]  # the five landmarks (faces.LANDMARK_NAMES) in pixels
    score: float  # the detector's confidence
    label: str
    probabilities: dict[str, float]
    cam: np.ndarray | None = None  # (h, w) float32 CAM of the predicted class over the aligned face, where asked

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["box"], out["landmarks"] = list(self.box), {k: list(v) for k, v in self.landmarks.items()}
        out["cam"] = None if self.cam is None else self.cam.tolist()
        return out


@dataclass
class PhotoResult:
    """The faces found in one picture, most confident first, or why it could not be read."""

    source: str
    faces: list[FaceResult]
    problem: str | None = None  # why the picture could not be read

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "faces": [f.to_dict() for f in self.faces], "problem": self.problem}


class FerModel:
    """A trained expression classifier, from a checkpoint or a `.pt2` export (`load`)."""

    def __init__(self, trained: TrainedModel):
        self.trained = trained
        self._detector: Any = None

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in the order of the model's outputs."""
        return self.trained.class_names

    @property
    def image_size(self) -> int:
        """The side of the square images the model takes."""
        return self.trained.image_size

    @property
    def has_cam(self) -> bool:
        return bool(self.trained.model.has_cam)

    def __repr__(self) -> str:
        return f"FerModel({self.trained.path}, classes={list(self.classes)}, image_size={self.image_size})"

    @overload
    def predict(self, x: ImageInput | Sequence[ImageInput], detect: Literal[False] = False, cam: bool = False,
                batch_size: int = 32, skip_bad: bool = False, min_face: int = 20,
                min_score: float = 0.9) -> list[ImageResult]: ...

    @overload
    def predict(self, x: ImageInput | Sequence[ImageInput], detect: Literal[True], cam: bool = False,
                batch_size: int = 32, skip_bad: bool = False, min_face: int = 20,
                min_score: float = 0.9) -> list[PhotoResult]: ...

    def predict(self, x: ImageInput | Sequence[ImageInput], detect: bool = False, cam: bool = False,
                batch_size: int = 32, skip_bad: bool = False, min_face: int = 20,
                min_score: float = 0.9) -> list[ImageResult] | list[PhotoResult]:
        """Classify each image of `x` (one result per image, in order): the whole image as a face crop, or, with
        `detect`, every face found in it (MTCNN, aligned as the training faces are; `min_face` pixels, detector
        confidence `min_score`). `cam` adds each prediction's class activation map. An image that cannot be read
        raises DataError naming it; with `skip_bad` (and always with `detect`) its result says why instead."""
        if batch_size < 1:
            raise ConfigError(f"predict: batch_size must be at least 1, got {batch_size}")
        if cam and not self.has_cam:
            from smec_fast.model import NO_CAM

            raise ConfigError(f"predict(cam=True): {self.trained.path}: {NO_CAM}")
        items = list(_inputs(x))
        if detect:
            return self._predict_faces(items, cam, batch_size, min_face, min_score)
        return self._predict_crops(items, cam, batch_size, skip_bad)

    def _predict_crops(self, items: list[tuple[str, Any]], cam: bool, batch_size: int,
                       skip_bad: bool) -> list[ImageResult]:
        from smec_fast.data.images import pil_to_tensor, resize_like_reference
        from smec_fast.inference import classify_images

        results: list[ImageResult] = []
        pending: list[tuple[int, torch.Tensor]] = []  # (position in results, (3, S, S) uint8)

        def flush() -> None:
            if not pending:
                return
            probs, maps = classify_images(self.trained, [image for _, image in pending], cam)
            for (i, _), p, m in zip(pending, probs, maps):
                k = int(p.argmax())
                results[i] = replace(results[i], label=self.classes[k],
                                     probabilities={n: float(v) for n, v in zip(self.classes, p.tolist())},
                                     cam=None if m is None else m.numpy())
            pending.clear()

        for source, item in items:
            try:
                picture = _picture(source, item)
            except DataError as err:
                if not skip_bad:
                    raise
                results.append(ImageResult(source, None, problem=str(err)))
                continue
            results.append(ImageResult(source, None))
            pending.append((len(results) - 1, pil_to_tensor(resize_like_reference(picture, self.image_size))))
            if len(pending) >= batch_size:
                flush()
        flush()
        return results

    def _predict_faces(self, items: list[tuple[str, Any]], cam: bool, batch_size: int, min_face: int,
                       min_score: float) -> list[PhotoResult]:
        from smec_fast.media import PhotoFaces, classify_faces, face_rows

        detector = self.detector(min_face, min_score)

        def photos() -> Iterator[tuple[PhotoFaces, Any]]:
            for source, item in items:
                try:
                    yield PhotoFaces(Path(source), [], []), _picture(source, item)
                except DataError as err:
                    yield PhotoFaces(Path(source), [], [], problem=str(err)), None

        results = []
        for photo, _ in classify_faces(self.trained, photos(), detector, batch_size, cams=cam):
            rows = face_rows(photo, list(self.classes))
            faces = [FaceResult(box=tuple(r["box"]), landmarks={k: tuple(v) for k, v in r["landmarks"].items()},
                                score=r["score"], label=r["predicted"], probabilities=r["probabilities"],
                                cam=photo.cams[i].numpy() if cam else None)
                     for i, r in enumerate(rows) if r["status"] == "ok"]
            results.append(PhotoResult(str(photo.path), faces, photo.problem))
        return results

    def detector(self, min_face: int = 20, min_score: float = 0.9):
        """The face detector predict(detect=True) uses (made once; ConfigError naming the install without it)."""
        from smec_fast.faces import FaceDetector

        if min_face < 1:
            raise ConfigError(f"min_face must be at least 1, got {min_face}")
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"min_score must be in [0, 1], got {min_score}")
        key = (min_face, min_score)
        if self._detector is None or self._detector[0] != key:
            device = next(self.trained.model.parameters()).device
            self._detector = key, FaceDetector(device, min_face_size=min_face, min_score=min_score)
        return self._detector[1]

    def predict_media(self, root: str | Path, fps: float | None = None, annotate: str | Path | None = None,
                      cam: bool = False, batch_size: int = 32, min_face: int = 20, min_score: float = 0.9,
                      progress: bool | None = None) -> MediaReport:
        """Every face of every photo and of every sampled video frame under `root` (a file or a folder), one row
        each as `predict --detect` writes them (media.predict_media), with annotated copies under `annotate`."""
        from smec_fast.media import predict_media

        if fps is not None and fps <= 0:
            raise ConfigError(f"fps must be positive, got {fps}")
        if cam and not self.has_cam:
            from smec_fast.model import NO_CAM

            raise ConfigError(f"cam: {self.trained.path}: {NO_CAM}")
        return predict_media(self.trained, Path(root), self.detector(min_face, min_score), batch_size, fps,
                             annotate, cam, progress)


def results_table(results: list[ImageResult], classes: Sequence[str]) -> str:
    """`predict`'s CSV of crop results: a row per image read, its file, predicted class and every class's
    probability."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "predicted", *classes])
    for r in results:
        if r.label is not None:
            writer.writerow([r.source, r.label, *(f"{r.probabilities[c]:.6f}" for c in classes)])
    return buffer.getvalue()


def write_cam_overlays(results: list[ImageResult], root: Path, out: str | Path) -> None:
    """One PNG per result read from a file under `out`: the image with its predicted class's CAM painted over
    it, at the image's place relative to `root` (a folder, or the one file given)."""
    import io

    import torch
    from PIL import Image

    from smec_fast.atomic import atomic_write_bytes
    from smec_fast.inference import cam_overlay, display_image

    for r in results:
        if r.label is None or r.cam is None:
            continue
        path = Path(r.source)
        overlay = cam_overlay(display_image(path), torch.from_numpy(r.cam)).permute(1, 2, 0).numpy()
        relative = path.relative_to(root) if root.is_dir() else Path(path.name)
        png = io.BytesIO()
        Image.fromarray(overlay).save(png, format="PNG")
        atomic_write_bytes(Path(out) / relative.with_name(relative.name + ".png"), png.getvalue())


def _inputs(x: Any) -> Iterator[tuple[str, Any]]:
    """(source name, one image) of each image of predict's `x`."""
    import torch
    from PIL import Image

    counter = iter(range(1 << 62))

    def walk(item: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(item, (str, Path)):
            yield str(item), Path(item)
        elif isinstance(item, Image.Image):
            yield f"<input {next(counter)}>", item
        elif isinstance(item, np.ndarray):
            yield f"<input {next(counter)}>", item
        elif isinstance(item, torch.Tensor):
            if item.dim() == 4:
                for one in item:
                    yield f"<input {next(counter)}>", one
            elif item.dim() == 3:
                yield f"<input {next(counter)}>", item
            else:
                raise ConfigError(f"predict: a tensor image is (C, H, W) or (B, C, H, W); got {tuple(item.shape)}")
        elif isinstance(item, (list, tuple)):
            for inner in item:
                yield from walk(inner)
        else:
            raise ConfigError(f"predict: cannot read an input of type {type(item).__name__}; give a file path, a PIL "
                              f"image, a numpy array, a tensor, or a list of these")

    yield from walk(x)


def _picture(source: str, item: Any) -> Image.Image:
    """One input as the 8-bit RGB picture the decode path makes of it (DataError naming it where it cannot)."""
    import torch

    from smec_fast.data.images import array_to_rgb8, decode_rgb

    if isinstance(item, Path):
        return decode_rgb(item)
    if isinstance(item, torch.Tensor):
        if item.shape[0] not in (1, 3, 4):
            raise DataError(f"{source}: a (C, H, W) tensor with 1, 3 or 4 channels; got {tuple(item.shape)}")
        values = item.detach().cpu()
        if values.is_floating_point():  # pixels in [0, 1], as torchvision's to_tensor gives them
            values = (values.float().clamp(0, 1) * 255).round().to(torch.uint8)
        item = values.permute(1, 2, 0).numpy()
    if isinstance(item, np.ndarray):
        try:
            return array_to_rgb8(item)
        except ValueError as err:
            raise DataError(f"{source}: {err}") from None
    return decode_rgb(item)


def load(path: str | Path, device: str = "auto") -> FerModel:
    """A trained model from a `smec-fast train` checkpoint (checkpoint.pt, selected.pt) or a `.pt2` export of one
    (`smec-fast export --format pt2`, with its `.json` beside it), in eval mode on `device`."""
    from smec_fast.devices import resolve_device
    from smec_fast.inference import load_trained_model

    path = Path(path)
    on = resolve_device(device)
    if path.suffix == ".pt2":
        return FerModel(_load_exported(path, on))
    return FerModel(load_trained_model(path, on))


def _load_exported(path: Path, device: torch.device) -> TrainedModel:
    """A `.pt2` program and its metadata as a TrainedModel whose network returns (logits, features)."""
    import torch

    from smec_fast.inference import ExportedNetwork, TrainedModel

    card = path.with_name(path.name + ".json")
    try:
        meta = json.loads(card.read_text(encoding="utf-8"))
        class_names, image_size = tuple(meta["class_names"]), int(meta["image_size"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: its metadata {card.name} is missing (export writes it beside the model)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{card}: not the metadata of an export ({err})") from None
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # a truncated or foreign file raises many kinds of errors
        raise CheckpointError(f"{path}: not a readable torch.export program ({err})") from None
    weight = meta.get("cam_weight")
    network = ExportedNetwork(program.module(), None if weight is None else torch.tensor(weight)).to(device)
    defaults = TrainConfig()  # an export from before its metadata named the method and recipe
    config = TrainConfig(image_size=image_size, method=str(meta.get("method", defaults.method)),
                         recipe=str(meta.get("recipe", defaults.recipe)))
    return TrainedModel(model=network, class_names=class_names, config=config, epoch=int(meta.get("epoch", 0)),
                        path=path)


def train(config: TrainConfig | str | Path | None = None, **options: Any) -> dict:
    """Train one run exactly as `smec-fast train` does with the same options and defaults (every TrainConfig
    field is an option: `train(dataset="folder", data="faces", epochs=30, out="runs/mine")`; `config` is a
    TrainConfig, or a YAML/JSON file of options that `options` override). Returns the metrics metrics.json
    holds."""
    from smec_fast.trainer import train as run

    if isinstance(config, TrainConfig):
        if options:
            raise ConfigError("train(): give a TrainConfig or options, not both")
        return run(config.validate())
    file_values = load_config_file(config) if config is not None else {}
    return run(resolve_config(file_values, option_values(options, "train()"), warn_unused=True))


def sweep(methods: str | Sequence[str], noise_rates: str | Sequence[float], out: str | Path,
          seeds: str | Sequence[int] = (0,), config: str | Path | None = None, reference: str | None = None,
          **options: Any) -> dict:
    """Train every cell of a grid of method variants x noise rates x seeds, as `smec-fast sweep` does (finished
    cells skipped, an interrupted one resumed), and write sweep.json, table.md and the plots in `out`. `methods`
    are variants, `"ce,smec:grid=2x2:label=split4"` or a list of them; `reference` is the label of the variant
    table.md puts against every other one (default: the last); `options` go to every run. Returns sweep.json's
    content: `cells`, one per run with its figures, and the command."""
    from smec_fast.sweeps import parse_floats, parse_ints, parse_variants, run_sweep

    spec = methods if isinstance(methods, str) else ",".join(methods)
    rates = parse_floats(noise_rates if isinstance(noise_rates, str) else ",".join(map(str, noise_rates)),
                         "sweep() noise_rates")
    seed_list = parse_ints(seeds if isinstance(seeds, str) else ",".join(map(str, seeds)), "sweep() seeds")
    base = load_config_file(config) if config is not None else {}
    base.update(option_values(options, "sweep()"))
    call = f"smec_fast.sweep(methods={spec!r}, noise_rates={rates}, seeds={seed_list}, out={str(out)!r}, ...)"
    return run_sweep(base, parse_variants(spec, "sweep() methods"), rates, seed_list, out, command=call,
                     reference=reference, option="sweep() reference")


def read_sweep(out: str | Path) -> list[dict]:
    """The cells of a finished sweep (its sweep.json), one dict per run: label, method, noise_rate, seed and its
    figures (final, best, balanced and selected accuracy, the label audit), ready for pandas.DataFrame."""
    path = Path(out) / "sweep.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["cells"])
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (run the sweep first)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a sweep's results ({err})") from None


__all__ = ["FaceResult", "FerModel", "ImageInput", "ImageResult", "PhotoResult", "load", "read_sweep", "sweep",
           "train"]
