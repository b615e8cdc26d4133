"""Image decoding and normalisation: the one place files become tensors, for training loaders, alignment and
prediction alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from smec_fast.errors import DataError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_rgb(path: Path) -> Image.Image:
    """The image file decoded with PIL and made RGB (greyscale, palette and RGBA alike); DataError names the
    file when it cannot be."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({first_line(err)})") from None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 tensor of an RGB PIL image."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def resize_like_reference(image: Image.Image, size: int) -> Image.Image:
    """PIL's antialiased bilinear resize to size x size: the reference every loader's resize is checked against."""
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BILINEAR)


def decode_image_file(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) uint8 RGB image: decoded with PIL and resized with its antialiased bilinear filter."""
    return pil_to_tensor(resize_like_reference(decode_rgb(path), size))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised with ImageNet statistics."""
    mean = images.new_tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def list_images(path: str | Path) -> list[Path]:
    """An image file, or the image files under a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMG_EXTENSIONS))}) in this folder")
    return files
