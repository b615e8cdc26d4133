"""Loader kinds (torch reference, DALI, device cache): pixel agreement, epochs, shards, flips, alignment, bad input.

Pixel tolerances are in grey levels (0..255), after undoing the normalisation. Where all loaders decode
with the same libjpeg-turbo (the CPU), the decoded pixels are equal and the differences come from resizing:

* The reference resizes with PIL, which rounds to uint8 after its horizontal pass and again after its
  vertical pass, each time by at most 0.5; DALI and the cache resize in float and do not round. The
  bilinear filter is the same (a triangle, widened by the scale when shrinking), so the two differ by at
  most 0.5 + 0.5 = 1 level: UPSCALE_TOL. torch's antialiased bilinear follows PIL's
  algorithm when shrinking as well, so the cache keeps that bound there too.
* When shrinking, the filter near the image border reaches past the edge: PIL (and torch) drop the taps
  outside and renormalise the rest, DALI repeats the border pixel instead. Away from the border (2 pixels
  for a shrink by less than 2) DALI keeps the 1-level bound; on the border rows and columns the gap is the
  weight of the missing taps times the local gradient, a few levels on these images (4.1 measured at
  32 -> 20): DALI_BORDER_TOL, with the mean held at 0.5 level so that a wrong filter (nearest, or no
  antialiasing, which is off by tens of levels here) cannot pass.
* Alignment: DALI's warp and the reference's grid_sample both sample bilinearly with black outside the
  photo, in the same corner coordinates, and round to uint8: values that agree to float precision can
  still round apart by 1 level. The resize then adds its 1 level: ALIGN_TOL = 1 + 1.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smec_fast.data import ImageSplit, SplitLoader, load_folder
from smec_fast.data.align import (ALIGNED_SIZE, TEMPLATE, corner_maps, similarity_fit, warp_matrices,
                                  warp_reference)
from smec_fast.data.cache import CachedLoader, HostBatchBuffers
from smec_fast.data.dali import dali_available
from smec_fast.data.rafdb import load_rafdb, read_landmarks
from smec_fast.data.images import IMAGENET_MEAN, IMAGENET_STD, decode_rgb, decode_image_file
from smec_fast.data.torch_loader import epoch_batches
from smec_fast.data.loaders import LOADER_KINDS, default_loader, make_loader
from smec_fast.data.validate import jpeg_problem, validate_split
from smec_fast.errors import ConfigError, DataError
from smec_fast.seeding import stream

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
KINDS = [pytest.param(k, marks=needs_dali) if k == "dali" else k for k in LOADER_KINDS]
AVAILABLE_KINDS = [k for k in LOADER_KINDS if k != "dali" or dali_available()]

UPSCALE_TOL = 1.0 + 1e-3
DALI_BORDER_TOL = 6.0
ALIGN_TOL = 2.0 + 1e-3
CPU = torch.device("cpu")


def grey_levels(images: torch.Tensor) -> torch.Tensor:
    """Normalised (B, 3, S, S) float back to 0..255 grey levels."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.cpu() * std + mean) * 255.0


def textured_image(rng: np.random.Generator, h: int, w: int, grey: bool) -> Image.Image:
    """A smooth random pattern with a few sharp-edged blocks and mild noise, like a photo's mix of detail."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    channels = []
    for _ in range(1 if grey else 3):
        fx, fy, phase = rng.uniform(0.05, 0.4, 2).tolist() + [rng.uniform(0, 6.3)]
        channels.append(128 + 70 * np.sin(fx * x + phase) * np.cos(fy * y - phase))
    img = np.stack(channels, -1)
    for _ in range(3):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        img[y0:y0 + h // 4, x0:x0 + w // 4] += rng.uniform(-60, 60)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img[..., 0] if grey else img, "L" if grey else "RGB")


def write_folder_dataset(root: Path, counts: dict[str, int], size: tuple[int, int], seed: int = 0,
                         grey_every: int = 3) -> Path:
    """root/train/<class>/*.jpg: generated JPEGs, every `grey_every`-th one greyscale, every 5th one with an
    EXIF orientation tag (rotate 90 degrees) that every loader must apply, as the decode path does."""
    rng = np.random.default_rng(seed)
    rotated = Image.Exif()
    rotated[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    k = 0
    for name, count in counts.items():
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(count):
            h, w = size
            image = textured_image(rng, h, w, grey=k % grey_every == 0)
            image.save(folder / f"{i:03d}.jpg", quality=92, exif=rotated if k % 5 == 0 else Image.Exif())
            k += 1
    return root


@pytest.fixture(scope="module")
def small_split(tmp_path_factory) -> ImageSplit:
    """40 JPEGs of 32 x 32 in 3 classes (RGB and greyscale)."""
    root = write_folder_dataset(tmp_path_factory.mktemp("folder"), {"a": 14, "b": 13, "c": 13}, (32, 32))
    return load_folder(root, "train")


def all_batches(loader):
    return [(images.cpu(), labels.cpu(), index.cpu()) for images, labels, index in loader]


def test_epoch_batches_with_one_shard_is_the_plain_seeded_epoch():
    n, b = 23, 5
    generator = stream("epoch-order", 7, 2)
    order = torch.randperm(n, generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    batches = epoch_batches(n, b, train=True, seed=7, epoch=2)
    assert [i.tolist() for i, _ in batches] == [order[k:k + b].tolist() for k in range(0, 20, b)]
    assert torch.equal(torch.cat([f for _, f in batches]), flips[:20])
    evaluation = epoch_batches(n, b, train=False)
    assert [i.tolist() for i, _ in evaluation] == [list(range(k, min(k + b, n))) for k in range(0, n, b)]
    assert all(f is None for _, f in evaluation)
    with pytest.raises(ValueError, match="shard 2 of 2"):
        epoch_batches(n, b, train=True, shard_id=2, num_shards=2)


@pytest.mark.parametrize("size", [48, 20])
@pytest.mark.parametrize("kind", KINDS[1:])
def test_loader_matches_reference_pixels_without_flips(small_split, kind, size):
    reference = all_batches(SplitLoader(small_split, size, 16, CPU, train=False))
    other = all_batches(make_loader(kind, small_split, size, 16, CPU, train=False, num_workers=2))
    assert len(other) == len(reference) == 3  # 16 + 16 + 8: evaluation keeps the last partial batch
    ref = grey_levels(torch.cat([r[0] for r in reference]))
    out = grey_levels(torch.cat([o[0] for o in other]))
    assert out.shape == ref.shape == (40, 3, size, size) and out.dtype == torch.float32
    for (_, ref_labels, ref_index), (_, labels, index) in zip(reference, other):
        assert torch.equal(index, ref_index) and torch.equal(labels, ref_labels)
    diff = (out - ref).abs()
    assert diff[..., 2:-2, 2:-2].max() <= UPSCALE_TOL, f"max difference {diff.max():.3f} grey levels"
    border_tol = DALI_BORDER_TOL if (kind == "dali" and size < 32) else UPSCALE_TOL
    assert diff.max() <= border_tol, f"max difference {diff.max():.3f} grey levels"
    assert diff.mean() <= 0.5, f"mean difference {diff.mean():.3f} grey levels"


def test_cached_images_are_the_reference_decode(small_split):
    loader = CachedLoader(small_split, 32, 8, CPU, train=False)
    for i in (0, 1, 17):
        decoded = np.asarray(decode_rgb(small_split.paths[i]))
        assert torch.equal(loader.images[i], torch.from_numpy(decoded.copy()).permute(2, 0, 1))
    stored = np.asarray(Image.open(small_split.paths[0]).convert("RGB"))  # tagged: rotate 90 degrees to display
    assert np.array_equal(loader.images[0].permute(1, 2, 0).numpy(), np.rot90(stored, k=-1))
    assert loader.images.dtype == torch.uint8 and loader.images.shape == (40, 3, 32, 32)


def test_all_loaders_give_the_same_training_batches_and_flips(small_split):
    # Every kind follows epoch_batches: same order and flips for the same (seed, epoch), flips on about half.
    flipped_plan = torch.cat([f for _, f in epoch_batches(40, 8, train=True, seed=3, epoch=1)])
    evaluation = {kind: grey_levels(torch.cat([b[0] for b in all_batches(
        make_loader(kind, small_split, 48, 40, CPU, train=False))])) for kind in AVAILABLE_KINDS}
    for kind in AVAILABLE_KINDS:
        loader = make_loader(kind, small_split, 48, 8, CPU, train=True, seed=3)
        loader.set_epoch(1)
        batches = all_batches(loader)
        assert len(batches) == len(loader) == 5
        index = torch.cat([b[2] for b in batches])
        assert sorted(index.tolist()) == list(range(40))  # every sample once (40 = 5 x 8, nothing dropped)
        assert torch.equal(torch.cat([b[1] for b in batches]), small_split.labels[index])
        images = grey_levels(torch.cat([b[0] for b in batches]))
        plain = evaluation[kind][index]
        mirrored = images.flip(-1)
        is_flipped = (mirrored - plain).abs().amax((1, 2, 3)) < 1e-3
        is_plain = (images - plain).abs().amax((1, 2, 3)) < 1e-3
        assert torch.all(is_flipped ^ is_plain), kind  # each image is its evaluation image, or its mirror
        assert torch.equal(is_flipped, flipped_plan), kind
        assert 10 <= int(is_flipped.sum()) <= 30
        loader.set_epoch(2)
        assert torch.cat([b[2] for b in all_batches(loader)]).tolist() != index.tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_two_shards_cover_the_epoch_once(small_split, kind):
    split = small_split.subset(torch.arange(37))
    train, evaluation = [], []
    for shard in (0, 1):
        loader = make_loader(kind, split, 32, 6, CPU, train=True, seed=1, shard_id=shard, num_shards=2)
        loader.set_epoch(4)
        batches = all_batches(loader)
        assert len(batches) == len(loader) == 3 and all(len(b[2]) == 6 for b in batches)  # 18 // 6 on each
        train.append(torch.cat([b[2] for b in batches]))
        for images, labels, index in batches:
            assert torch.equal(labels, split.labels[index]) and images.shape == (6, 3, 32, 32)
        loader = make_loader(kind, split, 32, 6, CPU, train=False, shard_id=shard, num_shards=2)
        evaluation.append(torch.cat([b[2] for b in all_batches(loader)]))
    assert not set(train[0].tolist()) & set(train[1].tolist())
    assert len(set(torch.cat(train).tolist())) == 36  # 37 - 37 % 2 samples, minus none: 18 per shard in 3 batches
    assert sorted(torch.cat(evaluation).tolist()) == list(range(37))  # evaluation: all, once
    assert evaluation[0].tolist() == list(range(0, 37, 2))


def test_torch_loader_with_one_shard_is_unchanged(small_split):
    plain = SplitLoader(small_split, 32, 8, CPU, train=True, seed=9)
    sharded = SplitLoader(small_split, 32, 8, CPU, train=True, seed=9, shard_id=0, num_shards=1)
    for (a, la, ia), (b, lb, ib) in zip(plain, sharded):
        assert torch.equal(a, b) and torch.equal(ia, ib) and torch.equal(la, lb)


def test_host_buffers_are_reused_only_when_free():
    buffers = HostBatchBuffers(slots=2)
    first = buffers.take((4, 3))
    ptr = first.data_ptr()
    second = buffers.take((4, 3))
    assert second.data_ptr() != ptr  # `first` is alive: not reused
    view = first[1:]
    del first
    assert buffers.take((4, 3)).data_ptr() != ptr  # a view still holds it
    del view
    assert buffers.take((4, 3)).data_ptr() == ptr


# ---- alignment ----------------------------------------------------------------------------------------------


def test_similarity_fit_recovers_a_known_transform():
    angle, scale, shift = 0.4, 2.5, torch.tensor([30.0, -12.0], dtype=torch.float64)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    photo = TEMPLATE @ (scale * rot).T + shift  # (5, 2) template points placed in a photo
    fit = similarity_fit(photo.unsqueeze(0), TEMPLATE)[0]  # photo -> template
    torch.testing.assert_close(fit[:, :2], (scale * rot).inverse(), atol=1e-9, rtol=0)
    torch.testing.assert_close(photo @ fit[:, :2].T + fit[:, 2], TEMPLATE, atol=1e-9, rtol=0)
    noisy = photo + torch.tensor([[0.5, -0.3], [0.0, 0.4], [-0.2, 0.0], [0.3, 0.3], [-0.4, 0.1]], dtype=torch.float64)
    residual = (noisy @ similarity_fit(noisy.unsqueeze(0), TEMPLATE)[0, :, :2].T
                + similarity_fit(noisy.unsqueeze(0), TEMPLATE)[0, :, 2] - TEMPLATE).norm(dim=1)
    assert residual.max() < 0.5  # least squares spreads the landmark noise (scaled by 1 / 2.5)


def test_corner_maps_are_each_others_inverse_and_take_landmarks_to_the_template():
    gen = torch.Generator().manual_seed(0)
    angle = torch.rand(4, generator=gen, dtype=torch.float64) * 2 - 1
    scale = 1 + 20 * torch.rand(4, 1, 1, generator=gen, dtype=torch.float64)  # faces up to 20x the frame, 2000 px
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1), torch.stack([angle.sin(), angle.cos()], -1)], 1)
    shift = 3000 * torch.rand(4, 1, 2, generator=gen, dtype=torch.float64)
    landmarks = TEMPLATE @ (scale * rot).transpose(1, 2) + shift  # (4, 5, 2) pixel positions in large photos
    to_frame, to_photo = corner_maps(landmarks)
    assert to_frame.dtype == to_photo.dtype == torch.float64
    # Corner coordinates: a pixel position p is the corner position p + 0.5 in the photo and in the frame.
    frame = (landmarks + 0.5) @ to_frame[:, :, :2].transpose(1, 2) + to_frame[:, None, :, 2]
    torch.testing.assert_close(frame, (TEMPLATE + 0.5).expand_as(frame), atol=1e-9, rtol=0)
    back = frame @ to_photo[:, :, :2].transpose(1, 2) + to_photo[:, None, :, 2]
    torch.testing.assert_close(back, landmarks + 0.5, atol=1e-9, rtol=0)
    # warp_matrices is that frame -> photo map, cast to float32 for the warps.
    torch.testing.assert_close(warp_matrices(landmarks), to_photo.float(), atol=0, rtol=0)


def face_photo(rng: np.random.Generator, landmarks_to_frame: torch.Tensor, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 photo of a pattern drawn in aligned-frame coordinates and mapped through the inverse
    of `landmarks_to_frame` (2, 3) pixel-position similarity, with dark discs on the five template points."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    m = landmarks_to_frame.numpy()
    fx = m[0, 0] * x + m[0, 1] * y + m[0, 2]  # frame position of every photo pixel
    fy = m[1, 0] * x + m[1, 1] * y + m[1, 2]
    img = np.stack([128 + 60 * np.sin(fx / 9 + c) * np.cos(fy / 11 - c) for c in range(3)], -1)
    for px, py in TEMPLATE.tolist():
        img[(fx - px) ** 2 + (fy - py) ** 2 < 16] = 20
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def rafdb_original(tmp_path_factory):
    """A RAF-DB tree with 6 original photos of different sizes, their landmarks and a label file."""
    root = tmp_path_factory.mktemp("rafdb_original")
    (root / "basic" / "EmoLabel").mkdir(parents=True)
    (root / "basic" / "Image" / "original").mkdir(parents=True)
    (root / "basic" / "Annotation" / "manual").mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines, truth = [], []
    for i in range(6):
        name = f"train_{i + 1:05d}.jpg"
        h, w = int(rng.integers(150, 260)), int(rng.integers(150, 260))
        angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(1.2, 2.2)
        rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                           dtype=torch.float64)
        centre = torch.tensor([w / 2, h / 2], dtype=torch.float64) + torch.from_numpy(rng.uniform(-15, 15, 2))
        points = (TEMPLATE - 49.5) @ (scale * rot).T + centre  # (5, 2) landmarks in the photo
        to_frame = similarity_fit(points.unsqueeze(0), TEMPLATE)[0]
        # photo 1 carries an EXIF orientation tag: its landmarks refer to the stored pixels, which every loader keeps
        exif = Image.Exif()
        exif[0x0112] = 6 if i == 1 else 1
        Image.fromarray(face_photo(rng, to_frame, h, w)).save(root / "basic" / "Image" / "original" / name, quality=95,
                                                              exif=exif.tobytes())
        text = "".join(f"{x:.3f}\t{y:.3f}\n" for x, y in points.tolist()) + "0\n1\n2\n"  # gender, race, age lines
        (root / "basic" / "Annotation" / "manual" / f"train_{i + 1:05d}_manu_attri.txt").write_text(text)
        lines.append(f"{name} {i % 7 + 1}\n")
        truth.append(points)
    (root / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("".join(lines) + "test_0001.jpg 1\n")
    return root, torch.stack(truth).float()


def test_rafdb_original_split_reads_landmarks_and_lines(rafdb_original):
    root, truth = rafdb_original
    split = load_rafdb(root, "train", images="original")
    assert len(split) == 6 and split.landmarks.shape == (6, 5, 2)
    torch.testing.assert_close(split.landmarks, truth, atol=1e-3, rtol=0)
    assert split.listed_at[2].endswith("list_patition_label.txt line 3")
    assert split.paths[0].name == "train_00001.jpg" and split.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert split.subset(torch.tensor([4, 1])).landmarks.shape == (2, 5, 2)


def test_aligned_face_lands_on_the_template(rafdb_original):
    root, _ = rafdb_original
    split = load_rafdb(root, "train", images="original")
    loader = SplitLoader(split, ALIGNED_SIZE, 6, CPU, train=False)
    faces = grey_levels(next(iter(loader))[0])  # (6, 3, 100, 100)
    for face in faces:
        for x, y in TEMPLATE.round().long().tolist():  # the dark discs drawn on the template points
            assert face[:, y, x].max() < 45
        assert face.mean() > 80  # and the rest of the pattern around them


@pytest.mark.parametrize("size", [ALIGNED_SIZE, 112])
@pytest.mark.parametrize("kind", KINDS[1:])
def test_alignment_agrees_with_reference(rafdb_original, kind, size):
    root, _ = rafdb_original
    split = load_rafdb(root, "train", images="original")
    reference = grey_levels(next(iter(SplitLoader(split, size, 6, CPU, train=False)))[0])
    images, labels, index = next(iter(make_loader(kind, split, size, 6, CPU, train=False)))
    assert index.tolist() == list(range(6)) and labels.tolist() == split.labels.tolist()
    diff = (grey_levels(images) - reference).abs()
    assert diff.max() <= ALIGN_TOL, f"max difference {diff.max():.3f} grey levels"
    assert diff.mean() <= 0.5


def test_warp_reference_is_the_identity_for_an_identity_matrix():
    image = torch.randint(0, 256, (1, 3, ALIGNED_SIZE, ALIGNED_SIZE), dtype=torch.uint8)
    eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    torch.testing.assert_close(warp_reference(image, eye), image.float(), atol=0.01, rtol=0)
    assert torch.allclose(warp_matrices(TEMPLATE.unsqueeze(0).float()), eye, atol=1e-5)


def test_bad_landmark_file_names_file_and_line(tmp_path):
    path = tmp_path / "train_00001_manu_attri.txt"
    path.write_text("10 20\n30 40\n50 x\n")
    with pytest.raises(DataError, match=r"train_00001_manu_attri.txt line 3: expected 'x y'"):
        read_landmarks(path)
    path.write_text("10 20\n30 40\n")
    with pytest.raises(DataError, match="2 landmark lines, five needed"):
        read_landmarks(path)


# ---- bad input ----------------------------------------------------------------------------------------------


@pytest.fixture()
def damaged_split(tmp_path):
    """A class-folder split of 6 images, one truncated JPEG and one file of random bytes named .jpg."""
    root = write_folder_dataset(tmp_path, {"a": 3, "b": 3}, (24, 24))
    good = (root / "train" / "a" / "000.jpg").read_bytes()
    (root / "train" / "a" / "001.jpg").write_bytes(good[: len(good) * 2 // 3])
    (root / "train" / "b" / "002.jpg").write_bytes(np.random.default_rng(0).bytes(700))
    return load_folder(root, "train")


def test_jpeg_structure_check():
    assert jpeg_problem(b"") == "not a JPEG file (no start-of-image marker)"
    image = textured_image(np.random.default_rng(0), 20, 20, grey=False)
    path_bytes = io.BytesIO()
    image.save(path_bytes, format="JPEG")
    data = path_bytes.getvalue()
    assert jpeg_problem(data) is None
    assert "no end-of-image marker" in jpeg_problem(data[:-40])
    assert "truncated in its headers" in jpeg_problem(data[:30])


def test_validate_names_the_bad_file_or_skips_with_a_count(damaged_split, caplog):
    with pytest.raises(DataError, match=r"train/a/001.jpg: corrupt JPEG, truncated.*\(2 of 6 train images cannot"):
        validate_split(damaged_split, what="train")
    with caplog.at_level(logging.WARNING):
        kept = validate_split(damaged_split, skip=True, what="train")
    assert len(kept) == 4 and all(p.name != "001.jpg" or p.parent.name != "a" for p in kept.paths)
    assert "skipped 2 of 6 train images" in caplog.text and "001.jpg" in caplog.text
    assert validate_split(kept) is kept


def test_random_bytes_named_jpg_is_reported(damaged_split):
    only = damaged_split.subset(torch.tensor([4, 5]))  # b/001.jpg (good) and b/002.jpg (random bytes)
    with pytest.raises(DataError, match=r"b/002.jpg: cannot decode image \(cannot identify image file"):
        validate_split(only)


def test_label_out_of_range_names_the_line(damaged_split, tmp_path):
    split = damaged_split.subset(torch.tensor([0, 3]))
    split.labels[1] = 5
    split.listed_at = ["labels.txt line 1", "labels.txt line 2"]
    with pytest.raises(DataError, match=r"labels.txt line 2: .*b/000.jpg: class index 5 is out of range 0..1"):
        validate_split(split)
    assert len(validate_split(split, skip=True)) == 1
    (tmp_path / "basic" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\ntrain_00002.jpg 9\n")
    with pytest.raises(DataError, match=r"list_patition_label.txt line 2: label 9 is out of range 1..7"):
        load_rafdb(tmp_path, "train")


def test_missing_rafdb_image_names_line_or_is_skipped(tmp_path, caplog):
    (tmp_path / "basic" / "EmoLabel").mkdir(parents=True)
    aligned = tmp_path / "basic" / "Image" / "aligned"
    aligned.mkdir(parents=True)
    (tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 1\ntrain_00002.jpg 2\ntrain_00003.jpg 3\n")
    for i in (1, 3):
        Image.new("RGB", (8, 8)).save(aligned / f"train_{i:05d}_aligned.jpg")
    with pytest.raises(DataError, match=r"list_patition_label.txt line 2: image .*train_00002_aligned.jpg not found"):
        load_rafdb(tmp_path, "train")
    with caplog.at_level(logging.WARNING):
        split = load_rafdb(tmp_path, "train", skip_bad=True)
    assert split.names == ["train_00001.jpg", "train_00003.jpg"] and "skipped 1 of 3 train images" in caplog.text
    assert split.listed_at[1].endswith("line 3")
    (tmp_path / "basic" / "Image" / "original").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "basic" / "Image" / "original" / "train_00001.jpg")
    with pytest.raises(DataError, match=r"line 1: landmark file .*train_00001_manu_attri.txt not found"):
        load_rafdb(tmp_path, "train", images="original")


def test_empty_class_folder_is_named(tmp_path):
    write_folder_dataset(tmp_path, {"a": 2}, (16, 16))
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(DataError, match=r"train: .*no valid file for the classes b"):
        load_folder(tmp_path, "train")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_error_is_one_line_naming_the_file(damaged_split, kind):
    # The truncated JPEG, unchecked, reaches the decoders: a DataLoader worker (torch), DALI, or the cache.
    split = damaged_split.subset(torch.tensor([0, 1, 2]))
    with pytest.raises(DataError) as caught:
        all_batches(make_loader(kind, split, 24, 3, CPU, train=False, num_workers=1))
    message = str(caught.value)
    assert "a/001.jpg: cannot decode image (image file is truncated" in message
    assert "\n" not in message and "Traceback" not in message


def test_factory_and_default_choice(small_split):
    assert default_loader("cpu", small_split) == "cached"
    in_memory = ImageSplit(names=["x", "y"], labels=torch.tensor([0, 1]), class_names=("a", "b"),
                           images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert default_loader("cpu", in_memory) == "torch"
    assert isinstance(make_loader("dali", in_memory, 8, 2, CPU, train=False), SplitLoader)
    assert isinstance(make_loader("auto", small_split, 8, 2, CPU, train=False), CachedLoader)
    with pytest.raises(ConfigError, match="--loader must be one of torch, dali, cached"):
        make_loader("fast", small_split, 8, 2, CPU, train=False)


def test_default_choice_reads_the_memory_the_os_can_give(monkeypatch, small_split):
    """The cache is sized against available memory (page cache included), not the free-page count, which
    a full page cache drives near zero on an idle machine."""
    import collections
    import os

    from smec_fast.data import loaders
    from smec_fast.data.cache import cache_bytes

    need = cache_bytes(small_split, 8)
    memory = collections.namedtuple("svmem", "total available")
    page = os.sysconf("SC_PAGE_SIZE")
    real_sysconf = os.sysconf
    # a page cache holding nearly everything: almost nothing "free", plenty available
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real_sysconf(name))
    monkeypatch.setattr(loaders.psutil, "virtual_memory", lambda: memory(total=8 * need, available=4 * need))
    assert loaders.available_host_memory() == 4 * need and page > 0
    assert default_loader("cpu", small_split, 8) == "cached"
    # too little available for the cache in a quarter of it: DALI when installed, else the reference loader
    monkeypatch.setattr(loaders.psutil, "virtual_memory", lambda: memory(total=8 * need, available=3 * need))
    monkeypatch.setattr(loaders, "dali_available", lambda: True)
    assert default_loader("cpu", small_split, 8) == "dali"
    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    assert default_loader("cpu", small_split, 8) == "torch"


def test_dali_missing_gives_a_clear_error(monkeypatch, small_split):
    import builtins

    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError("No module named 'nvidia.dali'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(ConfigError, match="--loader dali needs NVIDIA DALI.*nvidia-dali-cuda130"):
        make_loader("dali", small_split, 8, 2, CPU, train=False)


def mixed_mode_folder(root: Path, with_alpha: bool) -> Path:
    """root/train/a/: the same kind of picture stored as a phone would (JPEG turned by EXIF), at 16 bits (PNG and
    TIFF, greyscale and RGB), as CMYK, as a palette, and, `with_alpha`, with transparent pixels."""
    import tifffile

    rng = np.random.default_rng(3)
    folder = root / "train" / "a"
    folder.mkdir(parents=True)
    rgb = np.asarray(textured_image(rng, 32, 40, grey=False))
    sideways = Image.Exif()
    sideways[0x0112] = 6
    Image.fromarray(np.rot90(rgb, k=1).copy()).save(folder / "phone.jpg", quality=95, exif=sideways.tobytes())
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "grey16.png")
    tifffile.imwrite(folder / "rgb16.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).quantize(32).save(folder / "palette.png")
    if with_alpha:
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA").save(folder / "alpha.png")
    (root / "train" / "b").mkdir()
    Image.fromarray(rgb).save(root / "train" / "b" / "plain.png")
    return root


@pytest.mark.parametrize("kind", KINDS[1:])
def test_every_loader_reads_every_mode_as_the_decode_path_does(tmp_path, kind):
    split = load_folder(mixed_mode_folder(tmp_path, with_alpha=kind != "dali"), "train")
    size = 48  # enlarging: every loader within UPSCALE_TOL of the reference
    expected = torch.stack([decode_image_file(path, size) for path in split.paths]).float()  # (N, 3, S, S)
    images, _, index = next(iter(make_loader(kind, split, size, len(split), CPU, train=False)))
    assert index.tolist() == list(range(len(split)))
    diff = (grey_levels(images) - expected).abs()
    assert diff.max() <= UPSCALE_TOL, {p.name: round(float(d.max()), 2) for p, d in zip(split.paths, diff)}
    phone = [p.name for p in split.paths].index("phone.jpg")
    upright = np.asarray(Image.open(split.paths[phone]).convert("RGB").transpose(Image.Transpose.ROTATE_270))
    shown = np.array(Image.fromarray(upright).resize((size, size), Image.Resampling.BILINEAR))
    assert (expected[phone] - torch.from_numpy(shown).permute(2, 0, 1)).abs().max() == 0  # as displayed


@needs_dali
def test_dali_refuses_files_it_would_decode_otherwise_and_auto_avoids_it(tmp_path, monkeypatch):
    from smec_fast.data import loaders

    split = load_folder(mixed_mode_folder(tmp_path, with_alpha=True), "train")
    with pytest.raises(ConfigError, match=r"--loader dali: .*alpha.png holds mode RGBA, which DALI's decoder"):
        make_loader("dali", split, 32, 4, CPU, train=False)
    monkeypatch.setattr(loaders, "cache_bytes", lambda split, size: 10**18)  # too large to cache
    assert default_loader("cpu", split, 32) == "torch"
    (tmp_path / "train" / "a" / "alpha.png").unlink()
    assert default_loader("cpu", load_folder(tmp_path, "train"), 32) == "dali"
