"""Symmetric label noise and EAC's label-file format.

Symmetric noise (docs/design.md step 10): a seeded choice of round(r * N) training samples, each relabelled to a
class drawn uniformly from the other K - 1 classes, so exactly round(r * N) labels change.

Label files hold one `name label` pair per line with 1-based labels (`train_00001.jpg 5`), as RAF-DB's
`list_patition_label.txt` and EAC's noise files `noise01/02/03.txt` do.

About EAC's noise files: `wc -l` reports 12,270 lines for `noise01.txt` and `noise02.txt`, one short of
RAF-DB's 12,271 training images, because their last line (`train_12271.jpg 7`) has no trailing newline.
They do hold all 12,271 entries, and the reader takes the unterminated last line like any other. A file
that really lacks some training images leaves those images with their clean labels and says how many.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from smec_fast.errors import DataError
from smec_fast.atomic import atomic_write_text
from smec_fast.seeding import stream

log = logging.getLogger(__name__)


def symmetric_noise(labels: torch.Tensor, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """Labels with round(rate * N) entries moved to a different, uniformly drawn class.

    Args:
        labels: (N,) int64 clean labels in [0, num_classes).
        rate: fraction of samples to corrupt, in [0, 1).
        num_classes: K >= 2.
        seed: the same seed gives the same noisy labels.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    if num_classes < 2:
        raise ValueError("symmetric noise needs at least 2 classes")
    n = labels.numel()
    generator = stream("symmetric-noise", seed)
    chosen = torch.randperm(n, generator=generator)[: round(rate * n)]
    # An offset in 1..K-1 moves each chosen label to one of the other classes, uniformly.
    offset = torch.randint(1, num_classes, (chosen.numel(),), generator=generator)
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen] + offset) % num_classes
    return noisy


@dataclass(frozen=True)
class LabelLine:
    lineno: int
    name: str
    label: int  # 0-based


def parse_label_file(path: str | Path, num_classes: int) -> list[LabelLine]:
    """Read `name label` lines (1-based labels), keeping line numbers for error messages.

    Blank lines are skipped; a malformed line, a label outside 1..num_classes or a name given twice
    raises DataError naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"label file {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    entries: list[LabelLine] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path} line {lineno}: expected 'name label', got {line.strip()!r}")
        name, raw = parts
        try:
            label = int(raw)
        except ValueError:
            raise DataError(f"{path} line {lineno}: label {raw!r} is not an integer") from None
        if not 1 <= label <= num_classes:
            raise DataError(f"{path} line {lineno}: label {label} is out of range 1..{num_classes}")
        if name in seen:
            raise DataError(f"{path} line {lineno}: {name} is listed twice")
        seen.add(name)
        entries.append(LabelLine(lineno, name, label - 1))
    if not entries:
        raise DataError(f"label file {path}: no 'name label' lines")
    return entries


def read_label_file(path: str | Path, num_classes: int) -> dict[str, int]:
    """{name: 0-based label} of a label file (see parse_label_file)."""
    return {entry.name: entry.label for entry in parse_label_file(path, num_classes)}


def write_label_file(path: str | Path, names: list[str], labels: torch.Tensor) -> None:
    """Write `name label` lines with 1-based labels, atomically."""
    text = "".join(f"{name} {int(label) + 1}\n" for name, label in zip(names, labels.tolist()))
    atomic_write_text(path, text)


def write_noisy_label_file(labels: str | Path, out: str | Path, rate: float, seed: int, num_classes: int = 7,
                           prefix: str = "train_") -> tuple[int, int]:
    """`smec-fast noise`: the lines of the clean label file `labels` whose name starts with `prefix`, with
    symmetric noise of `rate` (seeded by `seed`), written to `out` in the same format; returns (labels changed,
    lines written)."""
    from smec_fast.errors import ConfigError

    entries = [e for e in parse_label_file(labels, num_classes) if e.name.startswith(prefix)]
    if not entries:
        raise ConfigError(f"{labels}: no line starts with --prefix {prefix!r}")
    clean = torch.tensor([e.label for e in entries])
    noisy = symmetric_noise(clean, rate, num_classes, seed)
    write_label_file(out, [e.name for e in entries], noisy)
    return int((noisy != clean).sum()), len(entries)


@dataclass
class NoiseReport:
    """How the training labels differ from the clean ones."""

    source: str  # "none", "symmetric", or the noise file's path
    changed: int  # samples whose label differs from the clean label
    total: int
    missing_from_file: int = 0  # training samples a noise file did not list (kept clean)

    @property
    def rate(self) -> float:
        return self.changed / max(self.total, 1)

    def to_dict(self) -> dict:
        return {"source": self.source, "changed": self.changed, "total": self.total, "rate": self.rate,
                "missing_from_file": self.missing_from_file}


def labels_from_file(names: list[str], clean: torch.Tensor, path: str | Path, num_classes: int
                     ) -> tuple[torch.Tensor, NoiseReport]:
    """Training labels from a label/noise file, matched to `names`.

    Names the file does not list keep their clean label (reported and logged); names in the file that are
    not training samples are an error, since they mean the file belongs to another dataset or split.
    """
    mapping = read_label_file(path, num_classes)
    wanted = set(names)
    foreign = [name for name in mapping if name not in wanted]
    if foreign and len(foreign) == len(mapping):
        raise DataError(f"noise file {path}: none of its {len(mapping)} names is a training image of this "
                        f"dataset (first: {foreign[0]})")
    labels = clean.clone()
    missing = []
    for i, name in enumerate(names):
        if name in mapping:
            labels[i] = mapping[name]
        else:
            missing.append(name)
    if missing:
        log.warning("noise file %s lists %d of %d training images; %d keep their clean labels (first: %s)",
                    path, len(names) - len(missing), len(names), len(missing), missing[0])
    if foreign:
        log.warning("noise file %s names %d images that are not in the training split (first: %s); "
                    "they are ignored", path, len(foreign), foreign[0])
    report = NoiseReport(source=str(path), changed=int((labels != clean).sum()), total=len(names),
                         missing_from_file=len(missing))
    return labels, report
