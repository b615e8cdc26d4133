"""Plain cross-entropy: the `ce` baseline."""

from __future__ import annotations

import torch.nn.functional as F

from .base import TrainingMethod, register


@register
class CrossEntropyMethod(TrainingMethod):
    """Plain cross-entropy on the original images."""

    name = "ce"

    def forward(self, model, images, labels, index):
        logits, _ = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"ce": loss.detach()}
