"""The embedded default dataset: procedurally drawn cartoon faces showing seven expressions.

Nothing is downloaded or read from disk: every image is rendered from a seed with tensor ops, so the
default command trains anywhere. The classes follow RAF-DB's order and its training-set proportions
(Happiness 39 %, Neutral 21 %, ..., Fear 2.3 %), so balanced accuracy matters as it does on RAF-DB.

Each expression is a set of facial action cues (brow height and slant, eye opening, mouth curve, width and
opening, nose wrinkles). Cues sit on both halves of the face and are drawn independently per side, so
either half alone carries evidence of the expression, which is what split-and-merge consistency assumes.
Per-sample jitter makes neighbouring expressions overlap (fear vs surprise, anger vs disgust, sadness vs
neutral), and pose, scale, skin tone, lighting, background and pixel noise vary freely.
"""

from __future__ import annotations

import torch

from .image_split import ImageSplit

CLASS_NAMES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")

# RAF-DB basic training split, images per class in CLASS_NAMES order (list_patition_label.txt).
RAFDB_TRAIN_COUNTS = (1290, 281, 717, 4772, 1982, 705, 2524)
RAFDB_TEST_COUNTS = (329, 74, 160, 1185, 478, 162, 680)

# Mean cue values per class. Units are face-relative (the face is about 2 units tall); y grows downwards.
#   brow_raise: brows above their neutral height; brow_slant: inner ends raised (+) or lowered (-);
#   eye_open: eye height relative to neutral; mouth_curve: corners raised (+, smile) or lowered (-);
#   mouth_open: gap between the lips; mouth_width: half width; wrinkle: nose-wrinkle strength.
_CUES = ("brow_raise", "brow_slant", "eye_open", "mouth_curve", "mouth_open", "mouth_width", "wrinkle")
_CLASS_CUES = torch.tensor([
    # raise  slant  eye   curve  open   width  wrinkle
    [0.11, 0.00, 1.50, 0.00, 0.15, 0.15, 0.0],  # Surprise: brows up, eyes wide, round open mouth
    [0.07, 0.07, 1.35, -0.04, 0.07, 0.26, 0.0],  # Fear: brows up and drawn in, eyes wide, mouth stretched
    [-0.04, -0.03, 0.65, -0.07, 0.02, 0.21, 1.0],  # Disgust: brows down, eyes narrowed, nose wrinkled
    [0.01, 0.00, 0.80, 0.12, 0.05, 0.29, 0.0],  # Happiness: smile, cheeks push the eyes narrower
    [-0.01, 0.07, 0.72, -0.10, 0.00, 0.21, 0.0],  # Sadness: inner brows up, mouth corners down
    [-0.07, -0.08, 0.72, -0.02, 0.00, 0.19, 0.0],  # Anger: brows down and drawn together, lips pressed
    [0.00, 0.00, 1.00, 0.00, 0.00, 0.23, 0.0],  # Neutral
])
_CUE_JITTER = torch.tensor([0.03, 0.03, 0.18, 0.035, 0.025, 0.025, 0.25])


def class_counts(total: int, proportions: tuple[int, ...] = RAFDB_TRAIN_COUNTS) -> list[int]:
    """Split `total` images over the classes in the given proportions (largest remainder), at least 1 each."""
    weights = torch.tensor(proportions, dtype=torch.float64)
    exact = weights / weights.sum() * total
    counts = exact.floor().long()
    for i in torch.argsort(exact - counts, descending=True)[: total - int(counts.sum())]:
        counts[i] += 1
    counts = counts.clamp(min=1)
    return counts.tolist()


def _soft(inside: torch.Tensor, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance (positive inside), one pixel wide at the edge."""
    return torch.sigmoid(inside / pixel)


def _segment_distance(x, y, x0, y0, x1, y1):
    """Distance from every point (x, y) to the segment (x0, y0)-(x1, y1); all broadcastable."""
    dx, dy = x1 - x0, y1 - y0
    t = (((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12)).clamp(0, 1)
    return torch.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _paint(canvas: torch.Tensor, alpha: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Alpha-blend `color` (N, 3, 1, 1) into canvas (N, 3, S, S) with coverage alpha (N, 1, S, S)."""
    return canvas * (1 - alpha) + color * alpha


def render_faces(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw one face per label.

    Args:
        labels: (N,) int64 class indices in CLASS_NAMES order.
        size: output height and width in pixels.
        generator: source of all randomness (cue jitter, pose, colours, noise).

    Returns:
        (N, 3, size, size) uint8 images.
    """
    n = labels.numel()

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    def col(t):  # (N,) -> (N, 1, 1, 1) for broadcasting over (N, 1, S, S)
        return t.view(n, 1, 1, 1)

    # Cues per sample and per face side (0 = image left, 1 = image right): (N, 2, cues).
    cues = _CLASS_CUES[labels].unsqueeze(1) + _CUE_JITTER * randn(n, 2, len(_CUES))
    # Mouth cues are shared by both sides (one mouth), the rest are drawn per side.
    for shared in ("mouth_open", "mouth_width"):
        i = _CUES.index(shared)
        cues[:, 1, i] = cues[:, 0, i]
    cue = {name: cues[..., i] for i, name in enumerate(_CUES)}  # each (N, 2)
    cue["eye_open"] = cue["eye_open"].clamp(0.25, 2.0)
    cue["mouth_open"] = cue["mouth_open"].clamp(min=0.0)
    cue["mouth_width"] = cue["mouth_width"].clamp(0.1, 0.4)
    cue["wrinkle"] = cue["wrinkle"].clamp(0.0, 1.0)

    # Pose: centre, scale and in-plane rotation of the face.
    cx, cy = 0.08 * randn(n), 0.08 * randn(n)
    scale = 0.82 + 0.2 * rand(n)
    angle = 0.1 * randn(n)

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # (S, S)
    gx, gy = gx.view(1, 1, size, size), gy.view(1, 1, size, size)
    cos, sin = col(torch.cos(angle)), col(torch.sin(angle))
    u = (cos * (gx - col(cx)) + sin * (gy - col(cy))) / col(scale)  # face coordinates, (N, 1, S, S)
    v = (-sin * (gx - col(cx)) + cos * (gy - col(cy))) / col(scale)
    pixel = 2.0 / size / scale.view(n, 1, 1, 1)  # one pixel in face units

    # Background: a random colour with a linear gradient.
    base = rand(n, 3, 1, 1)
    slope = 0.3 * randn(n, 3, 1, 1)
    canvas = (base + slope * gx).clamp(0, 1).expand(n, 3, size, size).clone()

    # Face: an ellipse in a skin tone from dark to light, with lighting from one side.
    tone = rand(n, 1, 1, 1)
    skin = torch.cat([0.35 + 0.6 * tone, 0.22 + 0.55 * tone, 0.15 + 0.5 * tone], dim=1)
    skin = (skin + 0.04 * randn(n, 3, 1, 1)).clamp(0, 1)
    face_r = torch.sqrt((u / 0.72) ** 2 + (v / 0.9) ** 2)
    face = _soft((1 - face_r) * 0.72, pixel)
    light = 1 + 0.15 * col(randn(n)) * u
    canvas = _paint(canvas, face, (skin * light).clamp(0, 1))

    dark = (0.1 + 0.15 * rand(n, 1, 1, 1)).expand(n, 3, 1, 1)
    white = torch.full((n, 3, 1, 1), 0.95)
    features = torch.zeros(n, 1, size, size)  # coverage of dark features, for the final blend
    for side, sign in ((0, -1.0), (1, 1.0)):
        ex = sign * 0.3
        # Eye: white ellipse with a dark iris; its height follows eye_open.
        eye_h = col(0.075 * cue["eye_open"][:, side])
        eye_r = torch.sqrt(((u - ex) / 0.13) ** 2 + ((v + 0.12) / eye_h) ** 2)
        eye = _soft((1 - eye_r) * eye_h, pixel)
        canvas = _paint(canvas, eye, white)
        iris_r = torch.minimum(eye_h, torch.full_like(eye_h, 0.055))
        iris = _soft(iris_r - torch.hypot(u - ex, v + 0.12), pixel) * eye
        features = torch.maximum(features, iris)
        # Brow: a thick segment whose height follows brow_raise and whose inner end follows brow_slant.
        brow_y = col(-0.36 - cue["brow_raise"][:, side])
        slant = col(cue["brow_slant"][:, side])
        d = _segment_distance(u, v, sign * 0.1, brow_y - slant, sign * 0.5, brow_y + 0.3 * slant)
        features = torch.maximum(features, _soft(0.035 - d, pixel))
        # Nose wrinkles: short slanted creases beside the nose bridge.
        wr = col(cue["wrinkle"][:, side])
        d = _segment_distance(u, v, sign * 0.07, -0.02, sign * 0.17, 0.06)
        features = torch.maximum(features, wr * _soft(0.018 - d, pixel))
    # Nose: a short vertical line.
    d = _segment_distance(u, v, 0.0, -0.02, 0.0, 0.16)
    features = torch.maximum(features, 0.6 * _soft(0.02 - d, pixel))

    # Mouth: a centre line y = 0.42 - curve * (x / width)^2 per side, opened by a dark lens.
    width = col(cue["mouth_width"][:, 0])
    curve = torch.where(u < 0, col(cue["mouth_curve"][:, 0]), col(cue["mouth_curve"][:, 1]))
    t = (u / width).clamp(-1, 1)
    centre = 0.42 - curve * t * t
    inside_x = _soft((width - u.abs()), pixel)
    open_half = col(cue["mouth_open"][:, 0]) * (1 - t * t).clamp(min=0).sqrt()
    lips = _soft(0.022 + open_half - (v - centre).abs(), pixel) * inside_x
    features = torch.maximum(features, lips)

    canvas = _paint(canvas, features * face, dark)
    canvas = canvas * (0.75 + 0.5 * rand(n, 1, 1, 1))  # overall brightness
    canvas = canvas + 0.03 * randn(n, 3, size, size)  # sensor noise
    return (canvas.clamp(0, 1) * 255).round().to(torch.uint8)


def synthetic_split(split: str, total: int, size: int, seed: int, chunk: int = 512) -> ImageSplit:
    """One split of the embedded dataset: `total` faces in RAF-DB's class proportions, rendered at `size`.

    The train and test splits use disjoint random streams, so no test face repeats a training face.
    Sample order is shuffled; names follow RAF-DB's (`train_00001.jpg`) so EAC-format noise files apply.
    """
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split must be train or test, got {split!r}")
    proportions = RAFDB_TRAIN_COUNTS if split == "train" else RAFDB_TEST_COUNTS
    generator = torch.Generator().manual_seed(_split_seed(seed, split))
    labels = torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(class_counts(total, proportions))])
    labels = labels[torch.randperm(labels.numel(), generator=generator)]
    images = torch.cat([render_faces(labels[i:i + chunk], size, generator) for i in range(0, labels.numel(), chunk)])
    digits = max(5 if split == "train" else 4, len(str(labels.numel())))
    names = [f"{split}_{i + 1:0{digits}d}.jpg" for i in range(labels.numel())]
    return ImageSplit(names=names, labels=labels, class_names=CLASS_NAMES, images=images)


def _split_seed(seed: int, split: str) -> int:
    # Distinct, stable streams per split; the constant keeps them away from the training seed's stream.
    return (seed * 1_000_003 + (17 if split == "train" else 29)) % (2**63 - 1)


__all__ = ["CLASS_NAMES", "render_faces", "synthetic_split", "class_counts", "RAFDB_TRAIN_COUNTS",
           "RAFDB_TEST_COUNTS"]
