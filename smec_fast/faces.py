"""Faces in photos: detection with five landmarks, and alignment to the frame the training faces are in.

The detector is MTCNN (Zhang, Zhang, Li and Qiao, IEEE SPL 2016) as packaged by facenet-pytorch, whose wheel
ships the three networks' weights, so nothing is downloaded at run time. Its five landmarks are RAF-DB's five
(eye centres, nose tip, mouth corners, "left" meaning the image's left), so a detected face is aligned by
the same similarity transform onto the same template as RAF-DB's original photos (data.align.align_photo).

facenet-pytorch 2.6 declares torch < 2.3 as a dependency although its MTCNN runs with current torch; it is
installed without its dependencies so that it cannot replace the installed torch (DETECTOR_INSTALL).
"""

from __future__ import annotations

from dataclasses import dataclass

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
        faces = [Face(tuple(float(v) for v in box), torch.from_numpy(pts.copy()), float(score))
                 for box, pts, score in zip(boxes, points, scores) if score >= self.min_score]
        return sorted(faces, key=lambda f: -f.score)


def align_face(photo: torch.Tensor | Image.Image, face: Face, size: int | None = None) -> torch.Tensor:
    """(3, S, S) uint8: `face` of `photo` ((3, H, W) uint8 or an RGB PIL image) in the training faces' aligned
    frame, resized to `size`."""
    if isinstance(photo, Image.Image):
        photo = pil_to_tensor(photo)
    return align_photo(photo, warp_matrices(face.landmarks.unsqueeze(0))[0], size)
