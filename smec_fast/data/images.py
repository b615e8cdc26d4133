"""Image decoding and normalisation: the one place files (and images handed over in memory) become 8-bit RGB
pictures and tensors, for the training loaders, alignment, prediction and the Python API alike.

What every image goes through (`decode_rgb`, `to_rgb8`):
- **Formats.** What PIL reads (JPEG, PNG, BMP, TIFF, WebP, GIF, AVIF, ...); HEIC/HEIF, iPhones' default, through
  the optional pillow-heif (`pip install -e ".[heif]"`; without it the error names the file and that line); TIFFs
  PIL cannot read (float and 32-bit RGB) through tifffile. An animated GIF or WebP gives its first frame here;
  `frames` gives every frame (media.py reads such files as videos).
- **Orientation.** "displayed" (the default) turns the picture as its EXIF orientation says, as every viewer
  shows it (phones store portrait photos sideways with an orientation tag); "stored" keeps the stored pixel grid,
  for images whose landmarks refer to it (RAF-DB's original photos with their landmark files). The three loaders
  agree on this rule: an image with landmarks is read as stored, every other as displayed.
- **Bit depth.** 16- and 32-bit integer images are scaled to 8 bits by the range their samples can take (the
  file's bits per sample; signed samples from 0 up), not clipped; float images by [0, 1] when every value lies
  there, else by their own minimum and maximum.
- **Modes.** Greyscale, palette, CMYK and YCbCr become RGB; images with an alpha channel (RGBA, LA, palette
  transparency) are composited over ALPHA_BACKGROUND (white), as they show on a page.
- **Safety.** An image larger than PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is refused before it
  is decoded. Every failure is a DataError naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from torchvision.datasets.folder import IMG_EXTENSIONS

from smec_fast.errors import DataError, first_line

T = TypeVar("T")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ALPHA_BACKGROUND = (255, 255, 255)  # what shows through transparent pixels
ORIENTATIONS = ("displayed", "stored")
HEIF_INSTALL = 'pip install -e ".[heif]"'
HEIF_SUFFIXES = (".heic", ".heif", ".hif")
# every suffix an image file may have: torchvision's, and GIF, AVIF and HEIC/HEIF
IMAGE_SUFFIXES = tuple(sorted(set(IMG_EXTENSIONS) | {".gif", ".avif", *HEIF_SUFFIXES}))
# ISO-BMFF brands of HEIF images (bytes 8-12 of the file, after "ftyp")
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_heif_registered: bool | None = None  # None: not tried yet


def _register_heif() -> bool:
    """Teach PIL to open HEIC/HEIF files, where pillow-heif is installed; whether it could."""
    global _heif_registered
    if _heif_registered is None:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            _heif_registered = False
        else:
            register_heif_opener()
            _heif_registered = True
    return _heif_registered


def _is_heif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def open_image(path: str | Path) -> Image.Image:
    """The file opened by PIL (its header read, its pixels not yet decoded). DataError names the file: missing,
    unreadable, not an image, HEIC without pillow-heif, or larger than PIL's decompression-bomb limit."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as err:
        raise DataError(f"{path}: cannot read image ({err.strerror or err})") from None
    if path.suffix.lower() in HEIF_SUFFIXES or _is_heif(head):
        if not _register_heif():
            raise DataError(f"{path}: a HEIC/HEIF image; reading it needs pillow-heif: {HEIF_INSTALL}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{path}: too large to decode safely ({first_line(err)})") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: cannot decode image ({first_line(err)})") from None


def _scaled_to_8_bits(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 of `values` mapped linearly from [low, high] to [0, 255], rounded and clipped."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def samples_to_8_bits(values: np.ndarray, bits: int | None = None, signed: bool | None = None) -> np.ndarray:
    """An array of samples as uint8, by the range they can take: integers by their bits per sample (the dtype's,
    unless `bits` says the file used fewer), signed ones from 0 up; floats by [0, 1] when every finite value lies
    there, else by their own minimum and maximum (not-a-number to 0)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind == "b":
        return values.astype(np.uint8) * 255
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.any():
            return np.zeros(values.shape, dtype=np.uint8)
        lo, hi = float(values[finite].min()), float(values[finite].max())
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        return _scaled_to_8_bits(np.where(finite, values, lo), lo, hi)
    if values.dtype.kind not in "iu":
        raise ValueError(f"samples of type {values.dtype} are not a picture")
    signed = values.dtype.kind == "i" if signed is None else signed
    bits = bits or values.dtype.itemsize * 8
    high = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    return _scaled_to_8_bits(values, 0, high)


def _file_bits(image: Image.Image) -> tuple[int | None, bool | None]:
    """(bits per sample, signed?) the file states (TIFF tags 258 and 339), else (None, None)."""
    tags = getattr(image, "tag_v2", None)
    if not tags:
        return None, None
    bits, sample_format = tags.get(258), tags.get(339)
    bits = bits[0] if isinstance(bits, tuple) else bits
    sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
    return (int(bits) if bits else None), (None if sample_format is None else sample_format == 2)


def to_rgb8(image: Image.Image, background: tuple[int, int, int] = ALPHA_BACKGROUND) -> Image.Image:
    """Any PIL image as 8-bit RGB (module docstring): greyscale, palette, CMYK and YCbCr converted, alpha
    composited over `background`, 16- and 32-bit integer and float images scaled by their range."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info or mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    if mode.startswith("I") or mode == "F":
        bits, signed = _file_bits(image)
        if mode.startswith("I;16"):
            bits, signed = 16, mode.endswith("S")
        grey = samples_to_8_bits(np.asarray(image), bits, signed)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


def array_to_rgb8(values: np.ndarray, background: tuple[int, int, int] = ALPHA_BACKGROUND) -> Image.Image:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any sample type as an 8-bit RGB PIL image (four
    channels: RGBA, composited over `background`)."""
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[..., 0]
    if values.ndim == 2:
        return Image.fromarray(samples_to_8_bits(values), "L").convert("RGB")
    if values.ndim != 3 or values.shape[2] not in (3, 4):
        raise ValueError(f"an image array is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {values.shape}")
    pixels = samples_to_8_bits(values)
    return to_rgb8(Image.fromarray(np.ascontiguousarray(pixels), "RGB" if values.shape[2] == 3 else "RGBA"),
                   background)


def _read_tiff(path: Path, orientation: str) -> Image.Image:
    """A TIFF that PIL cannot read (float or 32-bit RGB samples, say), read with tifffile."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if int(np.prod(page.shape[:2])) > (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise DataError(f"{path}: too large to decode safely ({page.shape[1]} x {page.shape[0]} pixels, more "
                            f"than PIL's limit of {Image.MAX_IMAGE_PIXELS})")
        values = page.asarray()
        tags = getattr(page, "tags", None)
        tag = tags.get("Orientation") if tags is not None else None
        exif_orientation = int(tag.value) if tag is not None else 1
    if values.ndim == 3 and values.shape[0] in (3, 4) and values.shape[2] not in (3, 4):  # planar samples
        values = np.moveaxis(values, 0, -1)
    image = array_to_rgb8(values)
    if orientation == "displayed" and exif_orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.info["exif"] = exif.tobytes()
        image = ImageOps.exif_transpose(image)
    return image


def _decode_with_pil(path: Path, orientation: str, background: tuple[int, int, int]) -> Image.Image:
    image = open_image(path)
    try:
        with image:
            image.load()
            if orientation == "displayed":
                image = ImageOps.exif_transpose(image)
            return to_rgb8(image, background)
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise DataError(f"{path}: cannot decode image ({first_line(err)})") from None


def decode_rgb(source: str | Path | Image.Image, orientation: str = "displayed",
               background: tuple[int, int, int] = ALPHA_BACKGROUND) -> Image.Image:
    """An image file (or an opened PIL image) as an 8-bit RGB PIL image, turned as its EXIF orientation says
    (`orientation` "displayed") or as stored ("stored"); its first frame where it has several. DataError names
    the file when it cannot be read or is not an image."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")
    if isinstance(source, Image.Image):
        image = ImageOps.exif_transpose(source) if orientation == "displayed" else source
        return to_rgb8(image, background)
    path = Path(source)
    try:
        return _decode_with_pil(path, orientation, background)
    except DataError as failure:
        if "too large" in str(failure) or not path.is_file():
            raise
        with path.open("rb") as f:
            if f.read(4) not in _TIFF_MAGIC:
                raise
        try:
            return _read_tiff(path, orientation)
        except DataError:
            raise
        except Exception as err:  # tifffile raises many kinds of errors on a damaged file
            raise DataError(f"{path}: cannot decode image ({first_line(err)})") from None


def _timed_frames(path: str | Path, convert: Callable[[Image.Image, bool], T]) -> Iterator[tuple[T, float]]:
    """(convert(frame, whether the file's orientation turns it), its start time in seconds) of every frame of an
    animated image, times from the frames' durations; a decoding error becomes a DataError naming the file."""
    image = open_image(path)
    t = 0.0
    try:
        with image:
            turned = image.getexif().get(0x0112, 1) != 1
            for frame in ImageSequence.Iterator(image):
                yield convert(frame, turned), t
                t += float(frame.info.get("duration", 100) or 100) / 1000.0
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise DataError(f"{path}: the image breaks off ({first_line(err)})") from None


def frames(path: str | Path) -> Iterator[tuple[Image.Image, float]]:
    """(8-bit RGB frame, its time in seconds) of every frame of an animated image (GIF, WebP, APNG), each turned
    as the file's orientation says; a still image gives one frame at time 0."""
    return _timed_frames(path, lambda frame, turned: to_rgb8(
        ImageOps.exif_transpose(frame.copy()) if turned else frame.copy()))


def frame_times(path: str | Path) -> list[float]:
    """The time in seconds at which each frame of an animated image starts (what `frames` gives beside each
    frame), without converting or turning any frame; a still image gives [0.0]."""
    return [t for _, t in _timed_frames(path, lambda frame, turned: None)]


def is_animated(path: str | Path) -> bool:
    """Whether an image file holds more than one frame. PIL answers from the header (APNG, WebP) or by finding a
    second frame (GIF), without decoding or counting the rest."""
    with open_image(path) as image:
        return bool(getattr(image, "is_animated", False))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 tensor of an RGB PIL image."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def resize_like_reference(image: Image.Image, size: int) -> Image.Image:
    """PIL's antialiased bilinear resize to size x size: the reference every loader's resize is checked against."""
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BILINEAR)


def decode_image_file(path: Path, size: int, orientation: str = "displayed") -> torch.Tensor:
    """(3, size, size) uint8 RGB image: decoded by decode_rgb and resized with PIL's antialiased bilinear filter."""
    return pil_to_tensor(resize_like_reference(decode_rgb(path, orientation), size))


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
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files
