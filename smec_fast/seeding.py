"""Independent random streams for a run's random choices.

Which labels symmetric noise flips, which images a size cap keeps, which ones are held out for validation,
each epoch's order and flips, and the methods' own draws (EAC's erasing, RUL's pairing) each come from a
generator of their own, seeded by a SHA-256 of the stream's name and its keys. Seeding them all with small
integers instead lets two of them share a sequence: with `torch.manual_seed(2)` behind both the validation
split and seed 2's noise, `torch.randperm` of the same length puts every held-out image among the flipped
ones. Named streams keep every pair apart whatever seeds a user picks.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["stream", "stream_seed", "device_stream"]


def stream_seed(name: str, *keys: int) -> int:
    """A 63-bit seed for stream `name` at `keys` (e.g. the run's seed and the epoch), the same on every machine."""
    text = ":".join([name, *(str(int(k)) for k in keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def stream(name: str, *keys: int) -> torch.Generator:
    """A CPU generator for stream `name` at `keys`."""
    return torch.Generator().manual_seed(stream_seed(name, *keys))


def device_stream(name: str, device: torch.device | str, *keys: int) -> torch.Generator:
    """A generator on `device` for stream `name` at `keys`, for draws as large as a batch of images (Gaussian
    pixel noise), which a CPU generator would have to copy to an accelerator every step."""
    return torch.Generator(device=device).manual_seed(stream_seed(name, *keys))
