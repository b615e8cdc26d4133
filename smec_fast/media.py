"""Faces in photos and videos, classified: each face detected (smec_fast.faces), aligned as the training faces
are and classified, the faces of many photos and frames in one batch; the rows `predict --detect` writes, and
annotated copies of the photos and videos."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from smec_fast.data.images import IMAGE_SUFFIXES, decode_rgb, frame_times, frames, is_animated, pil_to_tensor
from smec_fast.errors import DataError, first_line
from smec_fast.inference import TrainedModel, classify_images, face_cam_overlay


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
ANIMATED_SUFFIXES = (".gif", ".webp", ".png", ".apng")  # images that may hold several frames


@torch.no_grad()
def classify_faces(trained: TrainedModel, photos, detector, batch_size: int = 32, cams: bool = False):
    """For each (PhotoFaces, RGB PIL image or None) of `photos`: detect the faces, align each as the training
    faces are aligned, and classify them, the faces of many photos together, `batch_size` at a time. Yields the
    pairs in their order once their faces are classified; an image of None (unreadable) passes through.
    With `cams` (a model with CAMs), each face's CAM of its predicted class is kept too (PhotoFaces.cams)."""
    from smec_fast.faces import align_face

    waiting: list[tuple[PhotoFaces, object]] = []  # in order, not yielded yet
    pending: list[tuple[PhotoFaces, torch.Tensor]] = []  # (photo, aligned face) not classified yet

    def classify() -> None:
        if pending:
            probs, maps = classify_images(trained, [face for _, face in pending], cams)
            for (photo, _), p, m in zip(pending, probs, maps):
                photo.probabilities.append(p)
                if m is not None:
                    photo.cams.append(m)
            pending.clear()

    for photo, image in photos:
        if image is not None:
            photo.faces = detector.detect(image)
            if photo.faces:
                pixels = pil_to_tensor(image)
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


def _displayed(image, rotation: float):
    """A video frame turned as its display matrix says: `rotation` degrees counter-clockwise (PyAV's
    VideoFrame.rotation; phones record portrait video as landscape frames with -90 or 90)."""
    from PIL import Image

    turn = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270, 270: Image.Transpose.ROTATE_270,
            180: Image.Transpose.ROTATE_180, -180: Image.Transpose.ROTATE_180}.get(round(rotation))
    if turn is not None:
        return image.transpose(turn)
    return image.rotate(rotation, expand=True) if rotation else image


def _decoded_frames(path: Path):
    """(index, time in seconds, RGB PIL image as displayed) of every frame of a video (PyAV) or of an animated
    image (PIL). DataError names the file when it cannot be read."""
    if path.suffix.lower() not in VIDEO_EXTENSIONS:  # an animated GIF, WebP or PNG
        for index, (image, t) in enumerate(frames(path)):
            yield index, t, image
        return
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
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
                yield index, t, _displayed(frame.to_image(), frame.rotation)
        except av.FFmpegError as err:
            raise DataError(f"{path}: the video breaks off ({first_line(err)})") from None


def video_frames(path: Path, fps: float | None = None):
    """(PhotoFaces for the frame, RGB PIL image as displayed) of a video's frames, or of an animated image's; with
    `fps`, the first frame at or after every 1 / fps seconds. A video is turned as its display matrix says.
    DataError names the file when it cannot be read as a video."""
    due = 0.0
    for index, t, image in _decoded_frames(path):
        if fps is not None:
            if t + 1e-6 < due:
                continue
            while due <= t + 1e-6:
                due += 1.0 / fps
        yield PhotoFaces(path, [], [], frame=index, time=t), image


def video_rate(path: Path) -> float:
    """A video's average frame rate (frames per second), 25 where the file does not say; an animated image's from
    its frames' durations."""
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        times = frame_times(path)
        return (len(times) - 1) / times[-1] if len(times) > 1 and times[-1] > 0 else 10.0
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

        stream = self.container.add_stream(codec, rate=Fraction(rate).limit_denominator(1001))
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.pix_fmt = "yuv420p"
        self.stream = stream
        self.size: tuple[int, int] | None = None

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


def is_video(path: Path) -> bool:
    """A video file by its suffix, or an animated image (GIF, WebP, PNG) of several frames: --detect reads every
    frame of both."""
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return True
    if path.suffix.lower() in ANIMATED_SUFFIXES:
        try:
            return is_animated(path)
        except DataError:
            return False  # the photo path reports it
    return False


def detect_inputs(root: Path) -> tuple[list[Path], list[Path]]:
    """(photos, videos) of `root`: one file, or those under a folder (recursively, sorted)."""
    if root.is_file():
        return ([], [root]) if is_video(root) else ([root], [])
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    candidates = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() in VIDEO_EXTENSIONS]
    videos = [p for p in candidates if is_video(p)]
    video_set = set(videos)
    photos = [p for p in candidates if p not in video_set]
    if not photos and not videos:
        raise DataError(f"{root}: no image or video files in this folder")
    return photos, videos


def face_rows(photo: PhotoFaces, names: list[str]) -> list[dict]:
    """The rows of one photo or frame: one per face, or one saying why there is none."""
    from smec_fast.faces import LANDMARK_NAMES

    base = {"file": str(photo.path), "frame": photo.frame,
            "time_s": None if photo.time is None else round(photo.time, 4)}
    if photo.problem is not None:
        return [{**base, "face": None, "status": photo.problem}]
    if not photo.faces:
        return [{**base, "face": None, "status": "no face found"}]
    return [{**base, "face": i, "status": "ok", "score": round(face.score, 6), "box": [round(v, 2) for v in face.box],
             "landmarks": {n: [round(x, 2), round(y, 2)] for n, (x, y) in zip(LANDMARK_NAMES, face.landmarks.tolist())},
             "predicted": names[int(probs.argmax())],
             "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)}}
            for i, (face, probs) in enumerate(zip(photo.faces, photo.probabilities))]


def face_table(rows: list[dict], names: list[str]) -> str:
    """`predict --detect`'s CSV of face_rows: file, frame, time, face, status, where the face is, the predicted class
    and every class's probability; a row without a face leaves those cells empty."""
    from smec_fast.faces import FACE_COLUMNS, LANDMARK_NAMES, face_cells

    header = ["file", "frame", "time_s", "face", "status", *FACE_COLUMNS, "predicted", *names]
    buffer = io.StringIO()
    table = csv.writer(buffer)
    table.writerow(header)
    for row in rows:
        lead = [row["file"], "" if row["frame"] is None else row["frame"], "" if row["time_s"] is None else row["time_s"]]
        if row["status"] != "ok":
            table.writerow([*lead, "", row["status"]] + [""] * (len(header) - 5))
            continue
        location = face_cells(row["score"], row["box"], [row["landmarks"][n] for n in LANDMARK_NAMES])
        table.writerow([*lead, row["face"], "ok", *location, row["predicted"],
                        *(f"{row['probabilities'][n]:.6f}" for n in names)])
    return buffer.getvalue()


def face_json_lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@dataclass
class MediaReport:
    """What `predict_media` classified: every row, and the counts its summary line gives."""

    rows: list[dict] = field(default_factory=list)
    faces: int = 0
    photos_read: int = 0
    empty_photos: int = 0
    unreadable: int = 0
    frames: int = 0
    videos: int = 0


def predict_media(trained: TrainedModel, root: Path, detector, batch_size: int = 32, fps: float | None = None,
                  annotate: str | Path | None = None, cams: bool = False, progress: bool | None = None
                  ) -> MediaReport:
    """Every face of every photo under `root` (a file or a folder) and of every sampled frame of its videos (`fps`
    frames a second, default all), classified: one row each (face_rows), and a row for each photo or frame without
    a face and each file that cannot be read. With `annotate`, a copy of each photo (PNG) and video (MP4) under
    that folder with each face's box, landmarks and class drawn on it, over its CAM with `cams`."""
    from tqdm.auto import tqdm

    from smec_fast.atomic import atomic_write_bytes

    photos, videos = detect_inputs(root)
    names = list(trained.class_names)
    show = sys.stderr.isatty() if progress is None else progress
    report = MediaReport(videos=len(videos))

    def annotated_path(path: Path, suffix: str) -> Path:
        assert annotate is not None
        relative = path.relative_to(root) if root.is_dir() else Path(path.name)
        return Path(annotate) / relative.with_name(relative.name + suffix)

    for photo in predict_photo_faces(trained, photos, detector, batch_size, progress=show, cams=cams):
        report.rows += face_rows(photo, names)
        report.faces += len(photo.faces)
        report.empty_photos += photo.problem is None and not photo.faces
        report.unreadable += photo.problem is not None
        report.photos_read += photo.problem is None
        if annotate and photo.problem is None:
            png = io.BytesIO()
            annotate_photo(photo.path, photo, trained.class_names).save(png, format="PNG")
            atomic_write_bytes(annotated_path(photo.path, ".png"), png.getvalue())
    for video in videos:
        writer = None
        try:
            frames = classify_faces(trained, video_frames(video, fps), detector, batch_size, cams=cams)
            for frame, image in tqdm(frames, desc=video.name, disable=not show, dynamic_ncols=True):
                report.rows += face_rows(frame, names)
                report.faces += len(frame.faces)
                report.frames += 1
                if annotate:
                    if writer is None:
                        writer = VideoWriter(annotated_path(video, ".mp4"), fps or video_rate(video))
                    writer.write(annotate_photo(image, frame, trained.class_names))
        except DataError as err:
            report.rows += face_rows(PhotoFaces(video, [], [], problem=str(err)), names)
            report.unreadable += 1
        finally:
            if writer is not None:
                writer.close()
    return report
