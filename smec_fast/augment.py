"""Batch augmentations that run on the training device, drawn from an explicit generator."""

from __future__ import annotations

import math

import torch


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
