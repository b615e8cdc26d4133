"""The one decode path (smec_fast.data.images): every mode, bit depth, orientation and format against the same
picture stored as an 8-bit RGB file, and a fuzzed reader that only ever answers with a picture or a DataError."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from smec_fast import media
from smec_fast.data import images
from smec_fast.data.images import decode_rgb, frames
from smec_fast.errors import DataError

H, W = 40, 56


def picture() -> np.ndarray:
    """(H, W, 3) uint8: smooth ramps that reach 0 and 255 in every channel, and a corner mark that shows turns."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 255 // (W - 1), y * 255 // (H - 1), (x + y) * 255 // (W + H - 2)], -1).astype(np.uint8)
    rgb[:6, :10] = (255, 0, 128)
    return rgb


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (greyscale or RGB) written by hand: PIL writes no 16-bit RGB PNG."""
    h, w = values.shape[:2]
    colour = 2 if values.ndim == 3 else 0
    rows = b"".join(b"\x00" + values[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write(path: Path, data) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, np.ndarray):
        tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else "minisblack")
    else:
        image, kwargs = data
        image.save(path, **kwargs)
    return path


def rgb_of(path: Path, **kwargs) -> np.ndarray:
    return np.asarray(decode_rgb(path, **kwargs)).astype(np.int64)


# What each file holds -> the 8-bit RGB picture it must decode to (exactly: the formats are lossless).
P = picture()
G = grey(P)
G3 = np.repeat(G[..., None], 3, -1)


def lossless_cases():
    alpha = (np.mgrid[0:H, 0:W][1] * 255 // (W - 1)).astype(np.uint8)  # transparent on the left, opaque right
    over_white = np.round(P * (alpha[..., None] / 255.0) + 255 * (1 - alpha[..., None] / 255.0)).astype(np.uint8)
    grey_over_white = np.round(G * (alpha / 255.0) + 255 * (1 - alpha / 255.0)).astype(np.uint8)
    palette = Image.fromarray(P).quantize(64)
    palette_alpha = palette.copy()
    palette_alpha.info["transparency"] = 0
    palette_twin = np.asarray(palette.convert("RGB")).copy()
    palette_twin[np.asarray(palette) == 0] = 255  # index 0 shows the white background
    return {
        "rgb8.png": ((Image.fromarray(P), {}), P),
        "grey8.png": ((Image.fromarray(G), {}), G3),
        "bilevel.png": ((Image.fromarray(G).point(lambda v: 255 * (v > 127)).convert("1"), {}),
                        np.repeat(np.where(G > 127, 255, 0)[..., None], 3, -1)),
        "grey16.png": (png16(G.astype(np.uint16) * 257), G3),
        "rgb16.png": (png16(P.astype(np.uint16) * 257), P),
        "grey16.tif": (G.astype(np.uint16) * 257, G3),
        "rgb16.tif": (P.astype(np.uint16) * 257, P),
        "grey32.tif": ((Image.fromarray(G.astype(np.int32) * 8421504), {}), G3),  # PIL mode I, signed 32-bit
        "rgb32.tif": (P.astype(np.uint32) * 16843009, P),  # unsigned 32-bit: tifffile
        "greyfloat.tif": ((Image.fromarray(G.astype(np.float32) / 255), {}), G3),  # PIL mode F, in [0, 1]
        "rgbfloat.tif": (P.astype(np.float32) / 255, P),
        # outside [0, 1]: scaled by its own minimum and maximum
        "greyfloat-wide.tif": ((Image.fromarray(G.astype(np.float32) * 4 - 300), {}), np.repeat(
            np.round((G - G.min()) * 255.0 / (G.max() - G.min()))[..., None], 3, -1)),
        "palette.png": ((palette, {}), np.asarray(palette.convert("RGB"))),
        "palette-transparent.png": ((palette_alpha, {"transparency": 0}), palette_twin),
        "rgba.png": ((Image.fromarray(np.dstack([P, alpha]), "RGBA"), {}), over_white),
        "la.png": ((Image.fromarray(np.dstack([G, alpha]), "LA"), {}), np.repeat(grey_over_white[..., None], 3, -1)),
        "cmyk.tif": ((Image.fromarray(P).convert("CMYK"), {}), P),
        "rgb.bmp": ((Image.fromarray(P), {}), P),
        "rgb.webp": ((Image.fromarray(P), {"lossless": True}), P),
    }


@pytest.mark.parametrize("name", sorted(lossless_cases()))
def test_every_mode_and_depth_decodes_to_its_8_bit_twin(tmp_path, name):
    data, twin = lossless_cases()[name]
    decoded = rgb_of(write(tmp_path / name, data))
    assert decoded.shape == (H, W, 3)
    assert np.abs(decoded - twin).max() <= 1, f"{name}: max difference {np.abs(decoded - twin).max()}"


def test_images_handed_over_in_memory_take_the_same_path():
    ycbcr = Image.fromarray(P).convert("YCbCr")  # its conversion to RGB rounds by a level or two
    assert np.abs(np.asarray(decode_rgb(ycbcr)).astype(np.int64) - P).max() <= 3
    exif = Image.Exif()
    exif[0x0112] = 8
    turned = Image.fromarray(P).transpose(Image.Transpose.ROTATE_270)
    turned.info["exif"] = exif.tobytes()
    assert np.array_equal(np.asarray(decode_rgb(turned)), P)


@pytest.mark.parametrize("fmt,mode,tolerance", [("JPEG", "RGB", 3.0), ("JPEG", "CMYK", 3.0), ("JPEG", "L", 2.0),
                                                ("JPEG", "YCbCr", 3.0), ("AVIF", "RGB", 4.0), ("HEIF", "RGB", 4.0)])
def test_lossy_formats_decode_close_to_their_twin(tmp_path, fmt, mode, tolerance):
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif").register_heif_opener()  # to write the test file
    source = Image.fromarray(P).convert(mode)
    path = write(tmp_path / f"picture.{fmt.lower()}", (source, {"format": fmt, "quality": 95}))
    twin = np.asarray(source.convert("RGB")).astype(np.int64)
    decoded = rgb_of(path)
    assert decoded.shape == (H, W, 3)
    assert np.abs(decoded - twin).mean() <= tolerance  # a wrong channel order or level is off by tens


# EXIF orientation -> how the stored pixels relate to the displayed picture (PIL's transposes)
STORED = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
          4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_90],
          7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_270]}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_photos_are_turned_as_their_exif_orientation_says(tmp_path, orientation):
    stored = Image.fromarray(P)
    for turn in STORED.get(orientation, []):
        stored = stored.transpose(turn)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write(tmp_path / f"o{orientation}.png", (stored, {"exif": exif.tobytes()}))
    assert np.array_equal(rgb_of(path), P)  # as displayed
    assert np.array_equal(rgb_of(path, orientation="stored"), np.asarray(stored))
    jpeg = write(tmp_path / f"o{orientation}.jpg", (stored, {"exif": exif.tobytes(), "quality": 95}))
    assert np.abs(rgb_of(jpeg) - P).mean() < 3


def test_heic_without_pillow_heif_names_the_file_and_the_install(tmp_path, monkeypatch):
    heic = tmp_path / "phone.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    monkeypatch.setattr(images, "_heif_registered", False)
    with pytest.raises(DataError, match=r"phone.heic: a HEIC/HEIF image; reading it needs pillow-heif: pip install"):
        decode_rgb(heic)
    renamed = tmp_path / "phone.jpg"  # found by its content, whatever its name
    renamed.write_bytes(heic.read_bytes())
    with pytest.raises(DataError, match="phone.jpg: a HEIC/HEIF image"):
        decode_rgb(renamed)


def test_an_animated_image_gives_its_first_frame_or_every_frame(tmp_path):
    shades = [Image.new("RGB", (W, H), (v, v, v)) for v in (0, 100, 200)]
    path = tmp_path / "anim.gif"
    shades[0].save(path, save_all=True, append_images=shades[1:], duration=[100, 200, 300], loop=0)
    assert rgb_of(path).max() == 0  # the first frame
    got = list(frames(path))
    assert [int(np.asarray(f).mean()) for f, _ in got] == [0, 100, 200]
    assert [t for _, t in got] == pytest.approx([0.0, 0.1, 0.3])
    assert images.frame_times(path) == pytest.approx([0.0, 0.1, 0.3])
    assert media.video_rate(path) == pytest.approx(2 / 0.3)  # two intervals in 0.3 s
    assert images.is_animated(path)
    shades[0].save(still := tmp_path / "still.gif")
    assert not images.is_animated(still) and not images.is_animated(write(tmp_path / "still.png", (shades[0], {})))
    assert images.frame_times(still) == [0.0]
    broken = tmp_path / "broken.gif"
    broken.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="broken.gif: the image breaks off"):
        images.frame_times(broken)


def test_an_image_past_the_decompression_bomb_limit_is_refused(tmp_path, monkeypatch):
    path = write(tmp_path / "big.png", (Image.fromarray(P), {}))
    tiff = write(tmp_path / "big.tif", P.astype(np.float32) / 255)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 2)
    for file in (path, tiff):
        with pytest.raises(DataError, match=f"{file.name}: too large to decode safely"):
            decode_rgb(file)


def test_arrays_of_any_sample_type_become_8_bit_rgb():
    assert np.array_equal(np.asarray(images.array_to_rgb8(P.astype(np.uint16) * 257)), P)
    assert np.array_equal(np.asarray(images.array_to_rgb8(G)), G3)
    assert np.array_equal(np.asarray(images.array_to_rgb8(G[..., None].astype(np.float32) / 255)), G3)
    with pytest.raises(ValueError, match=r"\(H, W\), \(H, W, 1\), \(H, W, 3\) or \(H, W, 4\)"):
        images.array_to_rgb8(np.zeros((4, 4, 2), np.uint8))


# --- the fuzzed readers ----------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_EXAMPLES = 150  # cases each fuzz test tries: the image reader and the video reader
SUFFIXES = (".jpg", ".png", ".tif", ".gif", ".webp", ".heic", ".bmp", ".mp4")


def seed_files() -> dict[str, bytes]:
    """Sound files of several formats to damage."""
    out = {}
    for name, (data, _) in list(lossless_cases().items())[:8]:
        buffer = io.BytesIO()
        if isinstance(data, bytes):
            out[name] = data
            continue
        if isinstance(data, np.ndarray):
            tifffile.imwrite(buffer, data)
        else:
            image, kwargs = data
            image.save(buffer, format="TIFF" if name.endswith(".tif") else "PNG", **kwargs)
        out[name] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(P).save(buffer, format="JPEG", quality=90)
    out["rgb.jpg"] = buffer.getvalue()
    return out


SEEDS = seed_files()
SEED_NAMES = sorted(SEEDS)


@st.composite
def damaged(draw) -> tuple[bytes, str, str, str]:
    """(bytes, a file suffix, what was done, the sound file it came from): a sound file truncated, bit-flipped or
    both, or random bytes, under its own suffix or another's."""
    how = draw(st.sampled_from(["truncate", "flip", "both", "random", "renamed"]))
    source = draw(st.sampled_from(SEED_NAMES))
    data = bytearray(SEEDS[source])
    if how == "random":
        data = bytearray(draw(st.binary(min_size=0, max_size=2048)))
    if how in ("flip", "both"):
        for _ in range(draw(st.integers(1, 16))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
    if how in ("truncate", "both"):
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    suffix = draw(st.sampled_from(SUFFIXES)) if how in ("renamed", "random") else Path(source).suffix
    return bytes(data), suffix, how, source


def test_fuzzed_image_reader_answers_with_a_picture_or_a_data_error(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    sound = {}
    for name, data in SEEDS.items():
        write(folder / name, data)
        sound[name] = rgb_of(folder / name)
    tried = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(damaged())
    def check(case):
        data, suffix, how, source = case
        path = folder / f"case{len(tried)}{suffix}"
        path.write_bytes(data)
        tried.append(how)
        started = time.perf_counter()
        try:
            decoded = rgb_of(path)
        except DataError as err:
            assert str(err).startswith(str(path)), err  # one line naming the file
        else:
            assert decoded.ndim == 3 and decoded.shape[2] == 3
            if how == "truncate":  # a file cut short is refused, or decodes whole (only its tail was cut)
                assert np.array_equal(decoded, sound[source]), f"{source} cut to {len(data)} bytes"
        assert time.perf_counter() - started < 5.0  # no hang

    check()
    assert len(tried) == FUZZ_EXAMPLES


def test_fuzzed_video_reader_answers_with_frames_or_a_data_error(tmp_path_factory):
    av = pytest.importorskip("av")
    from smec_fast.media import video_frames

    folder = tmp_path_factory.mktemp("fuzz-video")
    clip = folder / "clip.mp4"
    with av.open(str(clip), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(P, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    sound = clip.read_bytes()
    tried = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.sampled_from(["truncate", "flip", "random"]), st.integers(0, 2**32 - 1))
    def check(how, key):
        rng = np.random.default_rng(key)
        data = bytearray(sound)
        if how == "truncate":
            data = data[:int(rng.integers(0, len(data)))]
        elif how == "flip":
            for position in rng.integers(0, len(data), size=8):
                data[position] ^= 1 << int(rng.integers(0, 8))
        else:
            data = bytearray(rng.integers(0, 256, size=int(rng.integers(0, 4096)), dtype=np.uint8).tobytes())
        path = folder / f"case{len(tried)}.mp4"
        path.write_bytes(bytes(data))
        tried.append(how)
        started = time.perf_counter()
        try:
            for photo, image in video_frames(path):
                assert image.mode == "RGB" and photo.frame is not None
        except DataError as err:
            assert str(err).startswith(str(path)), err
        assert time.perf_counter() - started < 10.0

    check()
    assert len(tried) == FUZZ_EXAMPLES
