"""Test metrics of the paper (sec. IV-C): accuracy, balanced accuracy and per-class accuracy, and the evaluation
pass that computes them."""

from __future__ import annotations

import torch

from smec_fast.distributed import all_reduce_sum
from smec_fast.precision import autocast_context


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def summarize(cm: torch.Tensor, class_names: tuple[str, ...] | list[str]) -> dict:
    """Accuracy, balanced accuracy (mean recall over classes present in the targets), per-class accuracy.

    Values are percentages, as the paper reports them. A class without test samples has no recall; it is
    reported as None and left out of the balanced accuracy.
    """
    cm = cm.double()
    support = cm.sum(1)
    correct = cm.diag()
    present = support > 0
    recall = torch.where(present, correct / support.clamp(min=1), torch.zeros_like(support)) * 100
    return {
        "accuracy": float(correct.sum() / cm.sum().clamp(min=1) * 100),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": {name: (float(recall[k]) if present[k] else None)
                               for k, name in enumerate(class_names)},
        "confusion_matrix": cm.long().tolist(),
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, class_names, amp: str = "off") -> dict:
    """Metrics of `model` on a split (eval mode, no augmentation); under torchrun, on the whole split. `loader`
    yields (images, labels, index) batches on its device."""
    model.eval()
    k = len(class_names)
    cm = torch.zeros(k, k, dtype=torch.long, device=loader.device)
    for images, labels, _ in loader:
        with autocast_context(loader.device, amp):
            logits, _ = model(images)
        cm += confusion_matrix(logits.argmax(1), labels, k).to(cm.device)
    return summarize(all_reduce_sum(cm).cpu(), class_names)  # every process scored its shard
