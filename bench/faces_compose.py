"""Test photos composed from real face crops, with the map from each crop into the photo known.

Each photo is blocky random clutter with crops pasted in, each upscaled, rotated in the image plane and placed
at a chosen centre; `compose` returns, per crop, the affine map crop -> photo, so a detector's boxes can be
checked against where the faces are and its landmarks mapped back into the crop (`to_crop`). Used by
bench/bench_faces.py and tests/test_faces.py.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def compose(crops: list[Image.Image], places: list[tuple[float, float, int, float]], size=(480, 360), seed=0):
    """A photo of `size` with each crop pasted at (centre x, centre y, side in pixels, angle in degrees
    counter-clockwise) over blocky random clutter; returns the photo and each crop's map into it, (2, 3):
    photo = A @ crop + t, in pixel positions."""
    rng = np.random.default_rng(seed)
    w, h = size
    photo = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3)).astype("uint8")).resize(size, Image.NEAREST)
    maps = []
    for crop, (cx, cy, side, angle) in zip(crops, places):
        face = crop.convert("RGB").resize((side, side), Image.BICUBIC).rotate(angle, Image.BICUBIC, expand=True)
        mask = Image.new("L", (side, side), 255).rotate(angle, expand=True)
        photo.paste(face, (round(cx - face.width / 2), round(cy - face.height / 2)), mask)
        a = math.radians(-angle)  # counter-clockwise on screen is clockwise in (x right, y down) coordinates
        rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * (side / crop.width)
        shift = np.array([cx, cy]) - rotation @ (np.array(crop.size) / 2)
        maps.append(np.concatenate([rotation, shift[:, None]], 1))
    return photo, maps


def to_crop(points, crop_map: np.ndarray) -> np.ndarray:
    """Photo positions (5, 2) (a tensor or an array) back to the crop's."""
    points = np.asarray(points, dtype=np.float64)
    return (np.linalg.inv(crop_map[:, :2]) @ (points - crop_map[:, 2]).T).T


def random_scene(rng: np.random.Generator, count: int, size=(640, 480), sides=(80, 200), angles=(-30, 30)):
    """Places for `count` faces (at most 6) in distinct cells of a 3 x 2 grid over the photo, each at a random
    side, angle and offset that keeps it inside its cell."""
    w, h = size
    cells = rng.choice(6, size=count, replace=False)
    places = []
    for cell in cells:
        col, row = cell % 3, cell // 3
        cw, ch = w / 3, h / 2
        side = int(rng.integers(sides[0], min(sides[1], int(min(cw, ch) / 1.4)) + 1))
        angle = float(rng.uniform(*angles))
        reach = side * (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))) / 2
        cx = col * cw + cw / 2 + rng.uniform(-1, 1) * max(0.0, cw / 2 - reach)
        cy = row * ch + ch / 2 + rng.uniform(-1, 1) * max(0.0, ch / 2 - reach)
        places.append((cx, cy, side, angle))
    return places
