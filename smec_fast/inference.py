"""Using a trained model: load it from a checkpoint, classify image files, compute their CAMs. Faces found in
photos and videos are classified by smec_fast.media."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from smec_fast.checkpoint import read_checkpoint
from smec_fast.config import TrainConfig, config_from_dict
from smec_fast.data.images import decode_image_file, decode_rgb, normalize, pil_to_tensor
from smec_fast.errors import CheckpointError, ConfigError, DataError
from smec_fast.kernels import cam
from smec_fast.methods import model_head
from smec_fast.model import FerResNet18, build_model

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A model restored from a training checkpoint, with what is needed to feed it."""

    model: FerResNet18 | ExportedNetwork  # a checkpoint's network, or a .pt2 export's
    class_names: tuple[str, ...]
    config: TrainConfig
    epoch: int
    path: Path

    @property
    def image_size(self) -> int:
        return self.config.image_size


class ExportedNetwork(torch.nn.Module):
    """A `.pt2` export's program (`torch.export.load(...).module()`) as the network a TrainedModel holds: it returns
    (logits, features), with `has_cam` and `cam_weight` (from the export's metadata) like FerResNet18's."""

    weight: torch.Tensor  # (K, 512) the CAM weight; empty for a model without CAMs

    def __init__(self, program: torch.nn.Module, cam_weight: torch.Tensor | None):
        super().__init__()
        self.program = program
        self.register_buffer("weight", cam_weight if cam_weight is not None else torch.zeros(0), persistent=False)
        self.has_cam = cam_weight is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.program(x)

    def train(self, mode: bool = True) -> "ExportedNetwork":
        # an exported program computes as it was exported (eval mode) and refuses train() and eval()
        self.training = mode
        return self

    @property
    def cam_weight(self) -> torch.Tensor:
        if not self.has_cam:
            from smec_fast.model import NO_CAM

            raise CheckpointError(NO_CAM)
        return self.weight


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Restore the model of a `smec-fast train` checkpoint in eval mode.

    Raises CheckpointError when the file is not such a checkpoint or its weights do not fit the network
    (another architecture, or a classifier for another number of classes than the checkpoint names).
    """
    path = Path(path)
    state = read_checkpoint(path)
    try:
        config = config_from_dict(state["config"])
        class_names = tuple(state["class_names"])
        weights = state["model"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: incomplete checkpoint ({err})") from None
    model = build_model(model_head(config), len(class_names), config.image_size)
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("other shape", wrong)) if keys)
        raise CheckpointError(f"{path}: weights do not fit a ResNet-18 with {len(class_names)} classes ({detail})")
    model.load_state_dict(weights)
    model.to(device).eval()
    return TrainedModel(model=model, class_names=class_names, config=config, epoch=int(state.get("epoch", 0)),
                        path=path)


def check_classes(trained: TrainedModel, class_names: tuple[str, ...], source: str) -> None:
    """Refuse to score a dataset whose classes differ from the model's."""
    if tuple(class_names) != trained.class_names:
        raise DataError(f"{source} has classes {', '.join(class_names)} but {trained.path} was trained on "
                        f"{', '.join(trained.class_names)}")


@torch.no_grad()
def classify_images(trained: TrainedModel, images: list[torch.Tensor], cams: bool = False
                    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Class probabilities (N, K) float32 on the CPU of (3, S, S) uint8 images at the model's input size, and with
    `cams` the (h, w) CAM of each one's predicted class (None for a model without CAMs, or without `cams`)."""
    device = next(trained.model.parameters()).device
    x = normalize(torch.stack(images).to(device))  # (B, 3, S, S)
    logits, feat = trained.model(x)
    probs = torch.softmax(logits.float(), dim=1).cpu()
    if not (cams and trained.model.has_cam):
        return probs, [None] * len(images)
    maps = cam(feat.float(), trained.model.cam_weight.float())  # (B, K, h, w)
    chosen = maps[torch.arange(len(images)), logits.argmax(1)].cpu()  # (B, h, w)
    return probs, list(chosen)


def _heat(cam_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`cam_map` (h, w) upsampled bilinearly to `size` and scaled to [0, 1] by its own minimum and maximum, as CAM
    figures usually are (Zhou et al., 2016; the paper's Fig. 4)."""
    heat = F.interpolate(cam_map[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-12)


def _blend_jet(image: torch.Tensor, heat: torch.Tensor, alpha: float) -> torch.Tensor:
    """`heat` (H, W) in [0, 1], coloured with the jet map and blended over `image` (3, H, W) uint8 with weight
    `alpha` (a number or an (H, W) tensor); returns (3, H, W) uint8."""
    import matplotlib

    colored = torch.from_numpy(matplotlib.colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    blended = (1 - alpha) * image.float() / 255 + alpha * colored
    return (blended.clamp(0, 1) * 255).round().to(torch.uint8)


def cam_overlay(image: torch.Tensor, cam_map: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """A heat map of `cam_map` (h, w) blended over `image` (3, H, W) uint8; returns (3, H, W) uint8."""
    return _blend_jet(image, _heat(cam_map, (image.shape[-2], image.shape[-1])), alpha)


def face_cam_overlay(image: torch.Tensor, landmarks: torch.Tensor, cam_map: torch.Tensor, alpha: float = 0.5
                     ) -> torch.Tensor:
    """The CAM of one detected face painted where that face lies in its photo; returns a new (3, H, W) uint8.

    The network saw the face in the aligned frame (the photo warped by the similarity transform that takes
    `landmarks` (5, 2) onto the template, data.align), so its CAM `cam_map` (h, w) covers that frame; here it is
    upsampled to the frame's 100 x 100 pixels and warped back into the photo by the inverse transform. Photo
    pixels outside the warped frame are left as they are.
    """
    from smec_fast.data.align import ALIGNED_SIZE, corner_maps

    _, h, w = image.shape
    photo_to_frame, frame_to_photo = (m[0] for m in corner_maps(landmarks.unsqueeze(0)))  # (2, 3) float64
    a, t = frame_to_photo[:, :2], frame_to_photo[:, 2]
    corners = torch.tensor([[0, 0], [ALIGNED_SIZE, 0], [0, ALIGNED_SIZE], [ALIGNED_SIZE, ALIGNED_SIZE]],
                           dtype=torch.float64) @ a.T + t  # (4, 2) the frame's corners in the photo
    x0, y0 = (int(max(0, v)) for v in corners.min(0).values.floor().tolist())
    x1, y1 = (int(min(n, v)) for n, v in zip((w, h), corners.max(0).values.ceil().tolist()))
    if x1 <= x0 or y1 <= y0:
        return image.clone()
    ys, xs = torch.meshgrid(torch.arange(y0, y1, dtype=torch.float64) + 0.5,
                            torch.arange(x0, x1, dtype=torch.float64) + 0.5, indexing="ij")
    frame = torch.stack([xs, ys], -1) @ photo_to_frame[:, :2].T + photo_to_frame[:, 2]  # (h', w', 2) frame corners
    inside = ((frame >= 0) & (frame < ALIGNED_SIZE)).all(-1)
    grid = (frame * (2.0 / ALIGNED_SIZE) - 1.0).to(torch.float32)[None]
    heat = F.grid_sample(_heat(cam_map, (ALIGNED_SIZE, ALIGNED_SIZE))[None, None], grid, mode="bilinear",
                         padding_mode="border", align_corners=False)[0, 0]
    out = image.clone()
    region = out[:, y0:y1, x0:x1]
    out[:, y0:y1, x0:x1] = torch.where(inside, _blend_jet(region, heat, alpha), region)
    return out


def display_image(path: Path, min_side: int = 224, max_side: int = 512) -> torch.Tensor:
    """(3, H, W) uint8 RGB image for figures, aspect kept, resized so that its long side lies in
    [min_side, max_side]."""
    from PIL import Image

    image = decode_rgb(path)
    long_side = max(image.size)
    scale = min(max_side, max(min_side, long_side)) / long_side
    if scale != 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    return pil_to_tensor(image)


def _model_input(source: Path | torch.Tensor, size: int) -> torch.Tensor:
    """(1, 3, size, size) uint8, prepared as the training loaders prepare images of that kind."""
    if isinstance(source, Path):
        return decode_image_file(source, size)[None]
    if source.shape[-2:] == (size, size):
        return source[None]
    return F.interpolate(source[None].float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def cam_panels(models: list[TrainedModel], sources: list[Path | torch.Tensor], labels: list[int | None],
               display_size: int = 224) -> list[list[tuple[torch.Tensor, str]]]:
    """For each image (a file, or a uint8 (3, H, W) tensor): the image, then each model's CAM overlay.

    The CAM shown is of the given label when there is one (so all models are compared on the same class,
    as in the paper's Fig. 4), else of the model's own prediction; captions give each model's prediction.
    """
    rows = []
    for source, label in zip(sources, labels):
        if isinstance(source, Path):
            shown_image = display_image(source, display_size, display_size)
        else:
            scale = display_size / max(source.shape[-2:])
            size = [max(1, round(d * scale)) for d in source.shape[-2:]]
            shown_image = F.interpolate(source[None].float(), size=size, mode="bilinear", align_corners=False,
                                        antialias=scale < 1)[0].round().clamp(0, 255).to(torch.uint8)
        row = [(shown_image, "input")]
        for trained in models:
            device = next(trained.model.parameters()).device
            logits, feat = trained.model(normalize(_model_input(source, trained.image_size).to(device)))
            probs = torch.softmax(logits.float(), 1)[0].cpu()
            predicted = int(probs.argmax())
            shown = predicted if label is None else label
            maps = cam(feat.float(), trained.model.cam_weight.float())[0, shown].cpu()  # (h, w)
            row.append((cam_overlay(shown_image, maps),
                        f"pred {trained.class_names[predicted]} {100 * probs[predicted]:.0f}%"))
        rows.append(row)
    return rows


def cam_figure(checkpoints: list[str | Path], out: str | Path, images: str | Path | None = None, num: int = 7,
               titles: list[str] | None = None, seed: int = 0, device: str = "auto") -> int:
    """`smec-fast cam`: the CAM overlays of several models side by side (the paper's Fig. 4), written to `out` as a
    PNG; returns the number of images. `images` (a file or folder) gives the images, each shown with every model's
    CAM of its own prediction; without it, `num` test images of the first model's dataset, one per class in turn
    (chosen by `seed`), each with every model's CAM of its true class. Column titles default to the methods."""
    from smec_fast.data import load_split
    from smec_fast.data.images import list_images
    from smec_fast.plots import save_cam_grid
    from smec_fast.devices import resolve_device

    models = [load_trained_model(path, resolve_device(device)) for path in checkpoints]
    for trained in models:
        if not trained.model.has_cam:
            from smec_fast.model import NO_CAM

            raise ConfigError(f"{trained.path}: {NO_CAM}")
    names = models[0].class_names
    for trained in models[1:]:
        if trained.class_names != names:
            raise ConfigError(f"{trained.path} has classes {', '.join(trained.class_names)}, "
                              f"{models[0].path} has {', '.join(names)}: compare models of the same classes")
    titles = titles or [m.config.method for m in models]
    if len(titles) != len(models):
        raise ConfigError(f"--labels gives {len(titles)} titles for {len(models)} checkpoints")
    if images:
        sources: list[Path | torch.Tensor] = list(list_images(images)[:num])
        labels: list = [None] * len(sources)
        row_titles = [Path(p).name for p in sources if isinstance(p, Path)]
    else:
        split = load_split(models[0].config, "test")
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).tolist()
        chosen: list[int] = []
        while len(chosen) < min(num, len(split)):  # one image per class in turn, as in the paper's Fig. 4
            for k in range(len(names)):
                pick = next((i for i in order if i not in chosen and int(split.labels[i]) == k), None)
                if pick is not None and len(chosen) < num:
                    chosen.append(pick)
        labels = [int(split.labels[i]) for i in chosen]
        sources = [split.images[i] for i in chosen] if split.images is not None else [split.files[i] for i in chosen]
        row_titles = [names[k] for k in labels]
    save_cam_grid(cam_panels(models, sources, labels), ["input", *titles], row_titles, out)
    return len(sources)
