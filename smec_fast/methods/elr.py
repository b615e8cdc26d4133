"""Cross-entropy plus early-learning regularisation: the `elr` baseline, SMEC's classification loss alone."""

from __future__ import annotations

from smec_fast.losses import ElrCrossEntropy

from .base import TrainingMethod, register


@register
class ElrMethod(TrainingMethod):
    """Cross-entropy plus ELR (Liu et al., NeurIPS 2020; the SMEC paper's eq. 4)."""

    name = "elr"
    options = ("beta", "lambda_elr")
    sample_state = ("elr.targets",)

    def __init__(self, num_samples: int, num_classes: int, beta: float, lam: float):
        super().__init__()
        self.elr = ElrCrossEntropy(num_samples, num_classes, beta, lam)

    @classmethod
    def from_config(cls, cfg, labels, num_classes, noise_rate, clean_labels=None):
        return cls(labels.numel(), num_classes, cfg.beta, cfg.lambda_elr)

    def sample_beliefs(self):
        return self.elr.targets

    def forward(self, model, images, labels, index):
        logits, _ = model(images)
        loss = self.elr(logits, labels, index)
        return loss, {"cls": loss.detach()}
