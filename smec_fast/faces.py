"""Faces in photos: detection with five landmarks, and alignment to the frame the training faces are in.

The detector is MTCNN (Zhang, Zhang, Li and Qiao, IEEE SPL 2016) as packaged by facenet-pytorch, whose wheel
ships the three networks' weights, so nothing is downloaded at run time. Its five landmarks are RAF-DB's five
(eye centres, nose tip, mouth corners, "left" meaning the image's left), so a detected face is aligned by
the same similarity transform onto the same template as RAF-DB's original photos (data.align.align_photo).

facenet-pytorch 2.6 declares torch < 2.3 as a dependency although its MTCNN runs with current torch; it is
installed without its dependencies so that it cannot replace the installed torch (DETECTOR_INSTALL).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from smec_fast.data.align import align_photo, warp_matrices
from smec_fast.data.images import pil_to_tensor
from smec_fast.errors import SmecFastError

DETECTOR_INSTALL = 'pip install -e ".[detect]" && pip install --no-deps facenet-pytorch==2.6.0'
# Photos whose long side exceeds this are shrunk for detection only (boxes and landmarks are mapped back and the
# face is cut from the full photo): MTCNN's image pyramid on a 10,000 x 10,000 photo takes gigabytes and minutes.
DETECTION_MAX_SIDE = 2048


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1) and landmarks (5, 2) in the photo's pixel positions, and the
    detector's confidence."""

    box: tuple[float, float, float, float]
    landmarks: torch.Tensor  # (5, 2) float64 x, y: left eye, right eye, nose tip, left and right mouth corner
    score: float


def _mtcnn_class():
    try:
        from facenet_pytorch import MTCNN
    except ImportError as err:
        raise SmecFastError(f"face detection needs facenet-pytorch ({err.msg}); install it with: "
                            f"{DETECTOR_INSTALL}") from None
    return MTCNN


def detector_available() -> bool:
    try:
        _mtcnn_class()
    except SmecFastError:
        return False
    return True


class FaceDetector:
    """MTCNN faces of at least `min_face_size` pixels with confidence >= `min_score`, most confident first."""

    def __init__(self, device: torch.device | str = "cpu", min_face_size: int = 20, min_score: float = 0.9,
                 max_side: int = DETECTION_MAX_SIDE):
        mtcnn = _mtcnn_class()
        self.mtcnn = mtcnn(keep_all=True, min_face_size=min_face_size, device=torch.device(device))
        self.min_score = min_score
        self.max_side = max_side

    @torch.no_grad()
    def detect(self, photo: Image.Image) -> list[Face]:
        """The faces in an RGB photo."""
        scale = 1.0
        if max(photo.size) > self.max_side:
            scale = self.max_side / max(photo.size)
            photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                                 Image.Resampling.BILINEAR)
        boxes, scores, points = self.mtcnn.detect(photo, landmarks=True)
        if boxes is None:
            return []
        # facenet-pytorch returns object arrays under numpy 2; the values are plain floats
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2) / scale
        faces = [Face((float(box[0]), float(box[1]), float(box[2]), float(box[3])), torch.from_numpy(pts.copy()),
                      float(score))
                 for box, pts, score in zip(boxes, points, scores) if score >= self.min_score]
        return sorted(faces, key=lambda f: -f.score)


def align_face(photo: torch.Tensor | Image.Image, face: Face, size: int | None = None) -> torch.Tensor:
    """(3, S, S) uint8: `face` of `photo` ((3, H, W) uint8 or an RGB PIL image) in the training faces' aligned
    frame, resized to `size`."""
    if isinstance(photo, Image.Image):
        photo = pil_to_tensor(photo)
    return align_photo(photo, warp_matrices(face.landmarks.unsqueeze(0))[0], size)


LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# The columns that locate one face in the CSV files of `predict --detect` and `align` (face_cells)
FACE_COLUMNS = ("score", "x0", "y0", "x1", "y1", *(f"{n}_{axis}" for n in LANDMARK_NAMES for axis in "xy"))


def face_cells(score: float, box, landmarks) -> list[str]:
    """The FACE_COLUMNS cells of one face: the score to six decimals, the box and the five (x, y) landmarks in
    photo pixels to two."""
    return [f"{score:.6f}", *(f"{v:.2f}" for v in box), *(f"{v:.2f}" for point in landmarks for v in point)]


ALIGN_CSV = "align.csv"
ALIGN_REPORT = "align.json"
RECORDS_DIR = ".align-records"  # one JSON per photo done, so that an interrupted `align` resumes
ALIGN_COLUMNS = ("file", "output", "status", "faces", *FACE_COLUMNS)

_worker_detector: FaceDetector | None = None


def kept_face(faces: list[Face]) -> Face:
    """The face `align` keeps from a photo with several: the most confident, the larger box on a tie."""
    return max(faces, key=lambda f: (f.score, (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))


def _init_worker(min_face_size: int, min_score: float) -> None:
    global _worker_detector
    torch.set_num_threads(1)  # the processes share the cores
    _worker_detector = FaceDetector(min_face_size=min_face_size, min_score=min_score)


def _align_one(job: tuple[str, str, str, str, int]) -> dict:
    """Align one photo (in a worker): write its aligned face and its record; returns the record."""
    from smec_fast.data.images import decode_rgb
    from smec_fast.errors import DataError
    from smec_fast.atomic import atomic_write_bytes, atomic_write_json

    source, relative, output, record_path, size = job
    record = {"file": relative, "output": "", "faces": 0}
    try:
        photo = decode_rgb(Path(source))
    except DataError as err:
        record["status"] = f"unreadable: {err}"
    else:
        assert _worker_detector is not None, "the worker's detector is made by _init_worker"
        faces = _worker_detector.detect(photo)
        record["faces"] = len(faces)
        if not faces:
            record["status"] = "no face"
        else:
            face = kept_face(faces)
            aligned = align_face(photo, face, size)  # (3, S, S)
            png = io.BytesIO()
            Image.fromarray(aligned.permute(1, 2, 0).numpy()).save(png, format="PNG")
            atomic_write_bytes(output, png.getvalue())
            record.update(status="aligned" if len(faces) == 1 else "several faces, the most confident kept",
                          output=str(Path(output).name), score=face.score, box=list(face.box),
                          landmarks=face.landmarks.tolist())
    atomic_write_json(record_path, record)
    return record


def align_tree(src: str | Path, dst: str | Path, size: int = 100, workers: int = 1, min_face_size: int = 20,
               min_score: float = 0.9, progress: bool = True) -> dict:
    """Detect and align the face of every photo under `src` into the same tree under `dst`, as PNG files of
    size x size (`--dataset folder --data DST` then trains on them). Photos with several faces keep the most
    confident one (kept_face); photos without a face or that cannot be read get no output and are listed.
    Writes `dst/align.csv` (one row per photo: status, faces found, the kept face's score, box and landmarks in
    the photo) and `dst/align.json` (counts and the lists); resumes after an interruption (photos with a record
    in `dst/.align-records/` are not done again). Returns align.json's content."""
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    from smec_fast.data.images import list_images
    from smec_fast.errors import ConfigError
    from smec_fast.atomic import atomic_write_json, atomic_write_text

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConfigError(f"align: {src} is not a folder")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ConfigError(f"align: the output folder {dst} must lie outside {src}")
    if size < 8:
        raise ConfigError(f"--size must be at least 8, got {size}")
    files = list_images(src)
    jobs: list[tuple[str, str, str, str, int]] = []
    outputs: dict[Path, Path] = {}
    for path in files:
        relative = path.relative_to(src)
        output = dst / relative.with_suffix(".png")
        if output in outputs:
            raise ConfigError(f"align: {relative} and {outputs[output]} would both be written as {output}")
        outputs[output] = relative
        record = dst / RECORDS_DIR / relative.with_name(relative.name + ".json")
        jobs.append((str(path), relative.as_posix(), str(output), str(record), size))
    todo = [job for job in jobs if not Path(job[3]).is_file()]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="photos", disable=not progress,
               dynamic_ncols=True)
    if workers <= 1:
        _init_worker(min_face_size, min_score)
        for job in todo:
            _align_one(job)
            bar.update()
    else:
        with get_context("spawn").Pool(workers, _init_worker, (min_face_size, min_score)) as pool:
            for _ in pool.imap_unordered(_align_one, todo, chunksize=4):
                bar.update()
    bar.close()

    records = [json.loads(Path(job[3]).read_text(encoding="utf-8")) for job in jobs]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(ALIGN_COLUMNS)
    for r in records:
        kept = face_cells(r["score"], r["box"], r["landmarks"]) if "score" in r else [""] * len(FACE_COLUMNS)
        writer.writerow([r["file"], r["output"], r["status"], r["faces"], *kept])
    atomic_write_text(dst / ALIGN_CSV, buffer.getvalue())
    report = {
        "source": str(src), "size": size, "min_face_size": min_face_size, "min_score": min_score,
        "photos": len(records),
        "aligned": sum(1 for r in records if r["output"]),
        "several_faces": [r["file"] for r in records if r["faces"] > 1],
        "no_face": [r["file"] for r in records if r["status"] == "no face"],
        "unreadable": [r["file"] for r in records if r["status"].startswith("unreadable")],
        "rule": "several faces: the most confident is kept (the larger box on a tie)",
    }
    atomic_write_json(dst / ALIGN_REPORT, report)
    return report
