"""Face alignment of RAF-DB's original images from their five landmarks.

RAF-DB ships every face twice: `basic/Image/aligned/train_00001_aligned.jpg` (100 x 100, already aligned) and
`basic/Image/original/train_00001.jpg` (the photo as found) with five landmarks in
`basic/Annotation/manual/train_00001_manu_attri.txt` (or `auto/train_00001_auto_attri.txt`): one `x y` line
each for the left eye, right eye, nose tip, left mouth corner and right mouth corner, "left" meaning the
image's left; further lines (gender, race, age) are ignored.

Alignment maps those five points onto TEMPLATE, a fixed five-point face in a 100 x 100 frame, with the
least-squares similarity transform (rotation, uniform scale, translation; Umeyama, IEEE TPAMI 1991), and
warps the photo with bilinear sampling, black outside the photo. The aligned face is then resized to the
training size like any other image.

Coordinates. Landmarks and TEMPLATE are pixel positions: the centre of pixel (row i, column j) is
(x, y) = (j, i). Warps take "corner" coordinates instead, where the image's top-left corner is (0, 0) and
the centre of pixel (i, j) is (j + 0.5, i + 0.5); DALI's warp_affine and PIL's affine transform both use
them, and `warp_matrices` converts. A warp matrix M (2, 3) maps an output position to the source position
it samples: src = M[:, :2] @ dst + M[:, 2].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .images import decode_rgb, pil_to_tensor, resize_like_reference

ALIGNED_SIZE = 100  # side of the aligned face, as RAF-DB's own aligned images
# Five points of a frontal face in the 100 x 100 aligned frame, pixel positions (x, y): left eye, right eye,
# nose tip, left mouth corner, right mouth corner. The pairs are mirror images about the frame's centre line
# x = 49.5, so a horizontally flipped aligned face is still aligned. Eyes 36 px apart at y = 40 and the mouth
# at y = 75 leave the whole face with little background, as in RAF-DB's aligned set.
TEMPLATE = torch.tensor([
    [31.5, 40.0],  # left eye
    [67.5, 40.0],  # right eye
    [49.5, 57.0],  # nose tip
    [35.5, 75.0],  # left mouth corner
    [63.5, 75.0],  # right mouth corner
], dtype=torch.float64)

def similarity_fit(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms (Umeyama) taking each point set of `src` onto `dst`.

    Args:
        src: (N, P, 2) points, P >= 2 and not all equal.
        dst: (P, 2) or (N, P, 2) target points.

    Returns:
        (N, 2, 3) float64 [A | t] with A = scale * rotation (det > 0), minimising sum |A src + t - dst|^2.
    """
    src = src.to(torch.float64)
    dst = dst.to(torch.float64).expand_as(src)
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)  # (N, 1, 2)
    s, d = src - mu_s, dst - mu_d
    var_s = (s * s).sum((1, 2)) / src.shape[1]  # (N,)
    if (var_s <= 1e-12).any():
        raise ValueError("similarity_fit: a point set has all its points in one place")
    cov = d.transpose(1, 2) @ s / src.shape[1]  # (N, 2, 2)
    u, sig, vt = torch.linalg.svd(cov)
    # A reflection would fit better than a rotation for a mirrored point set; force det(R) = +1.
    sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vt))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    fix = torch.ones(src.shape[0], 2, dtype=torch.float64)
    fix[:, 1] = sign
    rot = u @ torch.diag_embed(fix) @ vt  # (N, 2, 2)
    scale = (sig * fix).sum(1) / var_s  # (N,)
    a = scale.view(-1, 1, 1) * rot
    t = mu_d.squeeze(1) - (a @ mu_s.transpose(1, 2)).squeeze(2)  # (N, 2)
    return torch.cat([a, t.unsqueeze(2)], dim=2)


def corner_maps(landmarks: torch.Tensor, template: torch.Tensor = TEMPLATE
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both similarity maps between photo and aligned frame, float64, in corner coordinates.

    Args:
        landmarks: (N, 5, 2) landmark pixel positions in the photos.
        template: (5, 2) their positions in the aligned frame.

    Returns:
        (photo_to_frame, frame_to_photo), each (N, 2, 3) [A | b] with out = A @ in + b; each is the exact
        inverse of the other, both computed in float64 from the one least-squares fit.
    """
    fit = similarity_fit(landmarks, template)  # (N, 2, 3): photo -> frame, pixel positions
    a, t = fit[:, :, :2], fit[:, :, 2:]
    inv = torch.linalg.inv(a)  # (N, 2, 2): frame -> photo
    half = torch.full_like(t, 0.5)
    # frame = a photo + t; with corner coordinates c = p + 0.5: frame_c = a photo_c + t + 0.5 - a [0.5, 0.5]
    photo_to_frame = torch.cat([a, t + half - a @ half], dim=2)
    # photo = inv (frame - t); photo_c = inv frame_c + 0.5 - inv (t + 0.5)
    frame_to_photo = torch.cat([inv, half - inv @ (t + half)], dim=2)
    return photo_to_frame, frame_to_photo


def warp_matrices(landmarks: torch.Tensor, template: torch.Tensor = TEMPLATE) -> torch.Tensor:
    """(N, 2, 3) float32 warp matrices, aligned frame -> photo, in corner coordinates.

    They are what DALI's warp_affine takes with inverse_map=True and what `warp_reference` takes.

    Args:
        landmarks: (N, 5, 2) landmark pixel positions in the photos.
        template: (5, 2) their positions in the aligned frame.
    """
    return corner_maps(landmarks, template)[1].to(torch.float32)


def warp_reference(images: torch.Tensor, matrices: torch.Tensor, size: int = ALIGNED_SIZE) -> torch.Tensor:
    """Bilinear affine warp with zero padding, the plain-PyTorch counterpart of DALI's warp_affine.

    Args:
        images: (B, C, H, W) uint8 or float photos (one size for the batch).
        matrices: (B, 2, 3) output -> source maps in corner coordinates (see `warp_matrices`).
        size: side of the square output.

    Returns:
        (B, C, size, size) float32, not rounded.
    """
    b, _, h, w = images.shape
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")  # (size, size) output corner coordinates
    grid = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, -1, 3)  # (1, size*size, 3)
    src = grid @ matrices.to(torch.float64).transpose(1, 2)  # (B, size*size, 2) source corner coordinates
    # grid_sample with align_corners=False puts -1 and +1 on the outer edges of the border pixels,
    # which is the corner convention.
    norm = torch.stack([src[..., 0] * (2.0 / w) - 1.0, src[..., 1] * (2.0 / h) - 1.0], dim=-1)
    norm = norm.view(b, size, size, 2).to(torch.float32)
    return F.grid_sample(images.float(), norm, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


def align_photo(photo: torch.Tensor, matrix: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """(3, S, S) uint8: the face of `photo` (3, H, W) uint8 warped to the 100 x 100 aligned frame by `matrix`
    (2, 3, from `warp_matrices`) and, when `size` is given and differs, resized with PIL's antialiased bilinear
    filter (as images.decode_image_file resizes). Landmarks from an annotation file (RAF-DB) and from the face
    detector (smec_fast.faces) both come through here."""
    face = to_uint8(warp_reference(photo.unsqueeze(0), matrix.unsqueeze(0)))[0]  # (3, 100, 100)
    if size is None or size == ALIGNED_SIZE:
        return face
    return pil_to_tensor(resize_like_reference(Image.fromarray(face.permute(1, 2, 0).numpy()), size))  # (3, S, S)


def decode_aligned_image_file(path: Path, matrix: torch.Tensor, size: int | None) -> torch.Tensor:
    """(3, S, S) uint8: the photo decoded as stored (its landmarks, and so `matrix`, refer to the stored pixel
    grid, whatever its EXIF orientation says) and aligned by `matrix` (align_photo)."""
    return align_photo(pil_to_tensor(decode_rgb(path, orientation="stored")), matrix, size)
