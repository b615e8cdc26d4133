"""Batch augmentations that run on the training device, drawn from an explicit generator."""

from __future__ import annotations

import math

import torch

from smec_fast.data.images import IMAGENET_MEAN, IMAGENET_STD


def random_erasing(images: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                   scale: tuple[float, float] = (0.02, 0.25), ratio: tuple[float, float] = (0.3, 3.3),
                   value: float = 0.0, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Random erasing (Zhong et al., AAAI 2020) of a whole batch at once.

    Each image, with probability `p`, gets one rectangle set to `value`: its area is a fraction drawn
    uniformly from `scale`, its aspect ratio log-uniformly from `ratio`, its position uniformly where it fits
    (a rectangle larger than the image is clipped to it). Same distribution as torchvision's RandomErasing,
    which loops over images one by one with the global RNG; this draws every rectangle from `generator` on
    the CPU and erases with one masked write on the images' device.

    Args:
        images: (B, C, H, W), normalised (value 0 = the mean colour).
        shard: (k, m) when these images are share k of m of a global batch of m * B images, taken at
            positions k, k + m, ...: the rectangles are drawn for the global batch and this share's are used,
            so m processes erase exactly what one process with the global batch would.
    Returns:
        A new (B, C, H, W) tensor.
    """
    b, _, h, w = images.shape
    k, m = shard
    n = b * m
    area = torch.empty(n).uniform_(*scale, generator=generator)[k::m] * h * w
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)[k::m]
    aspect = torch.exp(log_ratio)
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()  # (B,)
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator)[k::m] * (h - eh + 1)).floor().long()
    left = (torch.rand(n, generator=generator)[k::m] * (w - ew + 1)).floor().long()
    erase = torch.rand(n, generator=generator)[k::m] < p
    device = images.device
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    top, left, eh, ew, erase = (t.to(device, non_blocking=True) for t in (top, left, eh, ew, erase))
    inside = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
              & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & erase.view(b, 1, 1))
    return images.masked_fill(inside.unsqueeze(1), value)  # (B, C, H, W)


def _channel_constants(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = images.new_tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


def gaussian_pixel_noise(images: torch.Tensor, which: torch.Tensor, generator: torch.Generator,
                         std: float = 30 ** 0.5) -> torch.Tensor:
    """Gaussian noise of `std` grey levels (of 255) added to the images where `which` (B,) bool is set, then
    clipped to the valid pixel range, as SCN's, EAC's and RUL's `add_gaussian_noise` do to the uint8 image
    (variance 30). Here it acts on the normalised batch at the training size; the released code adds it before
    resizing and rounds the result down to integers.

    Args:
        images: (B, 3, H, W) normalised with the ImageNet mean and std.
        which: (B,) bool on the images' device.
        generator: on the images' device (seeding.device_stream); drawn for every image, used where set.
    """
    mean, chan_std = _channel_constants(images)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
    noisy = images.float() + noise * (std / 255.0) / chan_std
    noisy = torch.maximum(torch.minimum(noisy, (1.0 - mean) / chan_std), -mean / chan_std)
    return torch.where(which.view(-1, 1, 1, 1), noisy.to(images.dtype), images)


def flip_or_noise_choice(batch: int, generator: torch.Generator, p: float = 0.5,
                         shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """The "basic augmentation" of SCN's and RUL's data sets: with probability `p` an image is either mirrored or
    given Gaussian pixel noise, one of the two with equal chance, never both (each 0.25 at p = 0.5).

    Returns (flip (B,) bool, noise (B,) bool) on the CPU, drawn for the global batch as random_erasing does, so
    that the processes of a torchrun job choose exactly what one process would.
    """
    k, m = shard
    n = batch * m
    apply = torch.rand(n, generator=generator)[k::m] < p
    pick_noise = torch.randint(0, 2, (n,), generator=generator)[k::m].bool()
    return apply & ~pick_noise, apply & pick_noise


def noise_choice(batch: int, generator: torch.Generator, p: float = 0.5,
                 shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """(B,) bool: which images get Gaussian pixel noise, each with probability `p`, drawn for the global batch."""
    k, m = shard
    return torch.rand(batch * m, generator=generator)[k::m] < p


def mirror(images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the images where `which` (B,) bool is set."""
    return torch.where(which.view(-1, 1, 1, 1), images.flip(-1), images)
