"""The device a command runs on: `--device auto | cpu | cuda | cuda:N`, and switches that default by device."""

from __future__ import annotations

import torch

from smec_fast.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return device


def switch_on(value: str, device: torch.device) -> bool:
    """`--compile` (auto | on | off) resolved for `device`: auto means on for CUDA, off elsewhere."""
    return value == "on" or (value == "auto" and device.type == "cuda")
