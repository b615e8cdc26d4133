"""Label audit: which training labels a model believes are wrong, and, where the clean labels are known, how
well that belief finds the wrong ones.

One evaluation pass over the split (eval mode, no augmentation) gives every image the model's class
probabilities p. Each image's suspicion is 1 - p[given label]; the believed class is argmax p. Methods that
keep running ELR targets t (ELR, SMEC) add their own belief, argmax t, and its suspicion 1 - t[given]. The
rows are sorted by suspicion, most suspect first: the order in which to review labels.

Where the labels a run trained on were made noisy from known clean ones (`--noise-rate`, or `--noise-file`
over a dataset's own labels), `noise_detection` scores how well the suspicion separates flipped from kept
labels: the area under the ROC curve (AUROC; 0.5 is chance, 1 a perfect ranking) and the precision and recall
of the k most suspect labels, with k the number of flipped ones.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch

from smec_fast.data.image_split import ImageSplit
from smec_fast.distributed import all_reduce_sum
from smec_fast.atomic import atomic_write_bytes, atomic_write_text
from smec_fast.precision import autocast_context

AUDIT_FILE = "label_audit.csv"
CONTACT_SHEET_FILE = "label_audit.png"


@torch.no_grad()
def class_probabilities(model: torch.nn.Module, loader, num_samples: int, num_classes: int,
                        amp: str = "off") -> torch.Tensor:
    """(N, K) float32 softmax probabilities of every sample, on the CPU. `loader` yields (images, labels,
    index) in eval order; under torchrun each process scores its shard and the shards are summed."""
    model.eval()
    probs = torch.zeros(num_samples, num_classes, device=loader.device)
    for images, _, index in loader:
        with autocast_context(loader.device, amp):
            logits, _ = model(images)
        probs[index] = torch.softmax(logits.float(), dim=1)
    return all_reduce_sum(probs).cpu()  # each sample was scored on exactly one process


@dataclass
class LabelAudit:
    """Beliefs about every label of a split, in the split's order."""

    split: ImageSplit
    given: torch.Tensor  # (N,) int64 labels audited (trained on)
    probs: torch.Tensor  # (N, K) model probabilities
    clean: torch.Tensor | None = None  # (N,) int64 known clean labels, None where unknown
    elr_targets: torch.Tensor | None = None  # (N, K) ELR running targets, where the method keeps them

    @property
    def suspicion(self) -> torch.Tensor:
        """(N,) 1 - p(given label)."""
        return 1.0 - self.probs.gather(1, self.given[:, None]).squeeze(1)

    def order(self) -> torch.Tensor:
        """Sample positions, most suspect first (ties in the split's order)."""
        return torch.sort(self.suspicion, descending=True, stable=True).indices

    def rows(self) -> list[dict]:
        names = self.split.class_names
        suspicion = self.suspicion
        p_believed, believed = self.probs.max(1)
        rows = []
        for rank, i in enumerate(self.order().tolist(), start=1):
            row = {"rank": rank, "index": i, "name": self.split.names[i],
                   "file": str(self.split.files[i]) if self.split.paths is not None else "",
                   "given": names[self.given[i]], "believed": names[believed[i]],
                   "p_given": float(self.probs[i, self.given[i]]), "p_believed": float(p_believed[i]),
                   "suspicion": float(suspicion[i])}
            if self.elr_targets is not None:
                target = self.elr_targets[i]
                row.update(elr_believed=names[int(target.argmax())],
                           elr_suspicion=float(1.0 - target[self.given[i]] / target.sum().clamp(min=1e-12)))
            if self.clean is not None:
                row.update(clean=names[self.clean[i]], flipped=int(self.clean[i] != self.given[i]))
            rows.append(row)
        return rows

    def write_csv(self, path: str | Path) -> None:
        rows = self.rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
        atomic_write_text(path, buffer.getvalue())

    def summary(self) -> dict:
        """metrics.json's `label_audit` block: counts, and the noise-detection scores where clean labels are
        known and some labels were flipped."""
        believed = self.probs.argmax(1)
        out: dict[str, Any] = {"file": AUDIT_FILE, "score": "1 - p(given label)", "images": len(self.given),
               "believed_differs": int((believed != self.given).sum())}
        if self.clean is None:
            return {**out, "flipped": None, "auroc": None, "note": "the clean labels are unknown"}
        flipped = self.clean != self.given
        count = int(flipped.sum())
        out["flipped"] = count
        if not 0 < count < len(flipped):
            return {**out, "auroc": None, "note": "no label was flipped: nothing to find"}
        out.update(noise_detection(self.suspicion, flipped))
        if self.elr_targets is not None:
            t = self.elr_targets / self.elr_targets.sum(1, keepdim=True).clamp(min=1e-12)
            out["elr_auroc"] = auroc(1.0 - t.gather(1, self.given[:, None]).squeeze(1), flipped)
        return out


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for telling `positives` (bool) from the rest: the probability that
    a random positive scores above a random negative, ties counting one half (Mann-Whitney U over midranks)."""
    scores = scores.double()
    positives = positives.bool()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positives and negatives")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # rank of each distinct score's last occurrence (1-based)
    midranks = (ends - (counts.double() - 1) / 2)[inverse]
    u = midranks[positives].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def noise_detection(suspicion: torch.Tensor, flipped: torch.Tensor) -> dict:
    """AUROC of `suspicion` for flipped labels, and precision and recall of the k most suspect, k = #flipped."""
    k = int(flipped.sum())
    top = torch.sort(suspicion, descending=True, stable=True).indices[:k]
    hits = int(flipped[top].sum())
    return {"auroc": auroc(suspicion, flipped), "k": k, "precision_at_k": hits / k, "recall_at_k": hits / k}


def save_contact_sheet(audit: LabelAudit, path: str | Path, count: int = 24, columns: int = 6) -> None:
    """The `count` most suspect images in a grid, each captioned with its given label, the believed class and
    that class's probability, written as one PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smec_fast.inference import display_image
    from smec_fast.plots import figure_bytes

    order = audit.order()[:count].tolist()
    rows = max(1, -(-len(order) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.7 * rows), squeeze=False)
    names = audit.split.class_names
    p_believed, believed = audit.probs.max(1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        images = audit.split.images
        image = images[i] if images is not None else display_image(audit.split.files[i])
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(f"{audit.split.names[i]}\ngiven {names[audit.given[i]]}\n"
                     f"believed {names[believed[i]]} {100 * float(p_believed[i]):.0f} %", fontsize=7)
    fig.suptitle(f"{len(order)} most suspect labels (1 - p(given label))", fontsize=9)
    fig.tight_layout()
    atomic_write_bytes(path, figure_bytes(fig))


__all__ = ["AUDIT_FILE", "CONTACT_SHEET_FILE", "LabelAudit", "auroc", "class_probabilities", "noise_detection",
           "save_contact_sheet"]
