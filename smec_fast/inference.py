"""Using a trained model: load it from a checkpoint, classify image files, compute their CAMs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from smec_fast.checkpoint import read_checkpoint
from smec_fast.config import TrainConfig, config_from_dict
from smec_fast.data.images import decode_image_file, decode_rgb, normalize, pil_to_tensor
from smec_fast.errors import CheckpointError, DataError, first_line
from smec_fast.kernels import cam
from smec_fast.methods import model_head
from smec_fast.model import FerResNet18, build_model

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A model restored from a training checkpoint, with what is needed to feed it."""

    model: FerResNet18
    class_names: tuple[str, ...]
    config: TrainConfig
    epoch: int
    path: Path

    @property
    def image_size(self) -> int:
        return self.config.image_size


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


@dataclass
class Prediction:
    path: Path
    probabilities: torch.Tensor  # (K,) float32
    cam: torch.Tensor | None  # (h, w) CAM of the predicted class; None for a model without CAMs

    @property
    def label(self) -> int:
        return int(self.probabilities.argmax())


@torch.no_grad()
def predict_files(trained: TrainedModel, files: list[Path], batch_size: int = 32, skip_bad: bool = False
                  ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """Classify image files; returns the predictions and the files skipped as unreadable (with why).

    Any image mode (greyscale, palette, RGBA) and size is accepted: it is made RGB and resized to the
    model's input size. Without `skip_bad`, the first unreadable file raises DataError.
    """
    device = next(trained.model.parameters()).device
    predictions: list[Prediction] = []
    skipped: list[tuple[Path, str]] = []
    for start in range(0, len(files), batch_size):
        batch_files, images = [], []
        for file in files[start:start + batch_size]:
            try:
                images.append(decode_image_file(file, trained.image_size))
                batch_files.append(file)
            except DataError as err:
                if not skip_bad:
                    raise
                skipped.append((file, str(err)))
                log.warning("skipping %s", err)
        if not images:
            continue
        x = normalize(torch.stack(images).to(device))  # (B, 3, S, S)
        logits, feat = trained.model(x)
        probs = torch.softmax(logits.float(), dim=1).cpu()
        if trained.model.has_cam:
            maps = cam(feat.float(), trained.model.cam_weight.float())  # (B, K, h, w)
            chosen = maps[torch.arange(len(images)), logits.argmax(1)].cpu()  # (B, h, w)
        else:
            chosen = [None] * len(images)
        predictions += [Prediction(f, p, m) for f, p, m in zip(batch_files, probs, chosen)]
    return predictions, skipped


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
    return _blend_jet(image, _heat(cam_map, tuple(image.shape[-2:])), alpha)


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


@dataclass
class PhotoFaces:
    """The faces found in one photo (or video frame) and the model's class probabilities for each (K,), or why
    there are none."""

    path: Path
    faces: list  # of smec_fast.faces.Face, most confident first
    probabilities: list[torch.Tensor]
    problem: str | None = None  # the photo could not be read: why
    frame: int | None = None  # a video's frame: its index in the stream
    time: float | None = None  # and its time in seconds
    cams: list[torch.Tensor] = field(default_factory=list)  # each face's (h, w) CAM of its class, if asked


VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")


@torch.no_grad()
def classify_faces(trained: TrainedModel, photos, detector, batch_size: int = 32, cams: bool = False):
    """For each (PhotoFaces, RGB PIL image or None) of `photos`: detect the faces, align each as the training
    faces are aligned, and classify them, the faces of many photos together, `batch_size` at a time. Yields the
    pairs in their order once their faces are classified; an image of None (unreadable) passes through.
    With `cams` (a model with CAMs), each face's CAM of its predicted class is kept too (PhotoFaces.cams)."""
    from smec_fast.faces import align_face

    device = next(trained.model.parameters()).device
    waiting: list[tuple[PhotoFaces, object]] = []  # in order, not yielded yet
    pending: list[tuple[PhotoFaces, torch.Tensor]] = []  # (photo, aligned face) not classified yet

    def classify() -> None:
        if pending:
            x = normalize(torch.stack([face for _, face in pending]).to(device))  # (B, 3, S, S)
            logits, feat = trained.model(x)
            for (photo, _), p in zip(pending, torch.softmax(logits.float(), dim=1).cpu()):
                photo.probabilities.append(p)
            if cams:
                maps = cam(feat.float(), trained.model.cam_weight.float())  # (B, K, h, w)
                chosen = maps[torch.arange(len(pending)), logits.argmax(1)].cpu()  # (B, h, w)
                for (photo, _), m in zip(pending, chosen):
                    photo.cams.append(m)
            pending.clear()

    for photo, image in photos:
        if image is not None:
            photo.faces = detector.detect(image)
            pixels = pil_to_tensor(image) if photo.faces else None
            pending += [(photo, align_face(pixels, face, trained.image_size)) for face in photo.faces]
        waiting.append((photo, image))
        if len(pending) >= batch_size or len(waiting) >= batch_size:
            classify()
            yield from waiting
            waiting.clear()
    classify()
    yield from waiting


def _photos(files: list[Path]):
    for path in files:
        try:
            yield PhotoFaces(path, [], []), decode_rgb(path)
        except DataError as err:
            yield PhotoFaces(path, [], [], problem=str(err)), None


def predict_photo_faces(trained: TrainedModel, files: list[Path], detector, batch_size: int = 32,
                        progress: bool = False, cams: bool = False) -> list[PhotoFaces]:
    """The faces of every photo, classified (classify_faces). A photo that cannot be read gets a PhotoFaces with
    `problem` set instead of stopping the others."""
    from tqdm.auto import tqdm

    done = classify_faces(trained, _photos(files), detector, batch_size, cams)
    return [photo for photo, _ in tqdm(done, total=len(files), desc="photos", disable=not progress,
                                       dynamic_ncols=True)]


def video_frames(path: Path, fps: float | None = None):
    """(PhotoFaces for the frame, RGB PIL image) of a video's frames, read with PyAV; with `fps`, the first frame
    at or after every 1 / fps seconds. DataError names the file when it cannot be read as a video."""
    try:
        import av
    except ImportError:
        raise DataError(f"{path}: reading videos needs PyAV: pip install -e \".[detect]\"") from None
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read it as a video ({first_line(err)})") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        due = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
                if fps is not None:
                    if t + 1e-6 < due:
                        continue
                    while due <= t + 1e-6:
                        due += 1.0 / fps
                yield PhotoFaces(path, [], [], frame=index, time=t), frame.to_image()
        except av.FFmpegError as err:
            raise DataError(f"{path}: the video breaks off ({first_line(err)})") from None


def video_rate(path: Path) -> float:
    """A video's average frame rate (frames per second), 25 where the file does not say."""
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 25.0


class VideoWriter:
    """Annotated frames into an H.264 MP4 (MPEG-4 part 2 where the PyAV build lacks libx264)."""

    def __init__(self, path: Path, rate: float):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        from fractions import Fraction

        self.stream = self.container.add_stream(codec, rate=Fraction(rate).limit_denominator(1001))
        self.stream.pix_fmt = "yuv420p"
        self.size = None

    def write(self, image) -> None:
        import av

        if self.size is None:  # yuv420p needs even sides
            self.size = (image.width - image.width % 2, image.height - image.height % 2)
            self.stream.width, self.stream.height = self.size
        if image.size != self.size:
            image = image.crop((0, 0, *self.size))
        for packet in self.stream.encode(av.VideoFrame.from_image(image)):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def annotate_photo(image, photo: PhotoFaces, class_names: tuple[str, ...]):
    """A copy of the photo (an RGB PIL image, or its file) with each face's box, landmarks, class and probability
    drawn on it, over each face's CAM where `photo.cams` holds them (face_cam_overlay)."""
    from PIL import Image, ImageDraw, ImageFont

    image = decode_rgb(image) if isinstance(image, Path) else image.copy()
    if photo.cams:
        pixels = pil_to_tensor(image)
        for face, cam_map in zip(photo.faces, photo.cams):
            pixels = face_cam_overlay(pixels, face.landmarks, cam_map)
        image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    for face, probs in zip(photo.faces, photo.probabilities):
        x0, y0, x1, y1 = face.box
        draw.rectangle([x0, y0, x1, y1], outline=(255, 210, 0), width=width)
        for x, y in face.landmarks.tolist():
            draw.ellipse([x - width, y - width, x + width, y + width], fill=(0, 200, 255))
        k = int(probs.argmax())
        text = f"{class_names[k]} {100 * probs[k]:.0f}%"
        left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
        shift = bottom - top + 2 * width
        draw.rectangle([left, top - shift, right + 2 * width, bottom - shift], fill=(255, 210, 0))
        draw.text((x0 + width, y0 - shift), text, fill=(0, 0, 0), font=font)
    return image
