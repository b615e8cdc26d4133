"""Scoring a trained checkpoint on a subset (train or test) of a dataset, its own or another of the same classes:
`evaluate` (accuracy, balanced accuracy, confusion matrix) and `audit` (which labels the model believes wrong)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from smec_fast.atomic import atomic_write_json
from smec_fast.config import SUBSETS, TrainConfig
from smec_fast.data import SplitLoader, labels_from_file, load_split
from smec_fast.data.image_split import ImageSplit
from smec_fast.errors import ConfigError
from smec_fast.inference import TrainedModel, check_classes, load_trained_model
from smec_fast.methods import narrowest_input_width
from smec_fast.precision import resolve_precision

log = logging.getLogger(__name__)


@dataclass
class ScoredSubset:
    """A checkpoint's model and the subset it scores, with an evaluation loader over it."""

    trained: TrainedModel
    config: TrainConfig  # the run's config, pointed at the dataset scored
    subset: str
    split: ImageSplit
    loader: SplitLoader
    amp: str  # the autocast dtype the scoring runs in

    @property
    def source(self) -> str:
        """'folder test subset of DATA' for messages and titles."""
        cfg = self.config
        return f"{cfg.dataset} {self.subset} subset" + (f" of {cfg.data}" if cfg.data else "")

    def default_out(self, prefix: str) -> Path:
        """PREFIX-DATASET-SUBSET beside the checkpoint."""
        return self.trained.path.parent / f"{prefix}-{self.config.dataset}-{self.subset}"


def open_subset(checkpoint: str | Path, subset: str = "test", dataset: str | None = None, data: str | None = None,
                batch_size: int = 128, num_workers: int = 2, device: str = "auto", amp: str = "auto"
                ) -> ScoredSubset:
    """The checkpoint's model on `subset` of its dataset, or of `dataset` / `data` where given; refuses a subset of
    other classes. `amp` auto scores as the run evaluated itself (bf16 on CUDA and on CPUs with native bf16 unless
    the run was trained with --amp off), so the figures match the run's own on the same machine."""
    from smec_fast.devices import resolve_device

    if subset not in SUBSETS:
        raise ConfigError(f"--subset must be one of {', '.join(SUBSETS)}; got {subset!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    on = resolve_device(device)
    trained = load_trained_model(checkpoint, on)
    cfg = trained.config
    if dataset and dataset != cfg.dataset:
        if dataset != "synthetic" and not data:
            raise ConfigError(f"--data is required with --dataset {dataset}")
        cfg = replace(cfg, dataset=dataset, data=data)
    elif data:
        cfg = replace(cfg, data=data)
    split = load_split(cfg, subset)
    scored_amp = trained.config.amp if amp == "auto" and trained.config.amp in ("auto", "off") else amp
    precision = resolve_precision(scored_amp, trained.config.channels_last, on,
                                  narrowest_input_width(trained.config))
    if precision.channels_last:
        trained.model.to(memory_format=torch.channels_last)
    scored = ScoredSubset(trained, cfg, subset, split,
                          SplitLoader(split, trained.image_size, batch_size, on, train=False,
                                      num_workers=num_workers), precision.amp)
    check_classes(trained, split.class_names, scored.source)
    return scored


def evaluate_checkpoint(scored: ScoredSubset, out: str | Path | None = None) -> tuple[dict, Path]:
    """Score the subset and write evaluation.json and confusion_matrix.png to `out` (default eval-DATASET-SUBSET
    beside the checkpoint); returns the results and the folder."""
    from smec_fast.metrics import evaluate
    from smec_fast.plots import save_confusion_matrix

    trained, cfg = scored.trained, scored.config
    metrics = evaluate(trained.model, scored.loader, trained.class_names, scored.amp)
    out = Path(out) if out else scored.default_out("eval")
    result = {
        "checkpoint": str(trained.path), "epoch": trained.epoch, "method": cfg.method,
        "noise_rate": cfg.noise_rate, "dataset": cfg.dataset, "data": cfg.data, "split": scored.subset,
        "num_images": len(scored.split), "class_names": list(trained.class_names), **metrics,
    }
    atomic_write_json(out / "evaluation.json", result)
    save_confusion_matrix(metrics["confusion_matrix"], trained.class_names, out / "confusion_matrix.png",
                          title=f"{cfg.method}, {scored.source}: accuracy {metrics['accuracy']:.2f} %")
    return result, out


def audit_checkpoint(scored: ScoredSubset, labels: str | None = None, out: str | Path | None = None,
                     sheet: int = 24) -> tuple[dict, Path]:
    """Rank the subset's labels (or those of the EAC-format file `labels`, scored against the dataset's own) by
    how likely the model finds them wrong: label_audit.csv, label_audit.json and, with `sheet` > 0, a contact
    sheet of the most suspect images, in `out` (default audit-DATASET-SUBSET beside the checkpoint)."""
    from smec_fast.audit import AUDIT_FILE, CONTACT_SHEET_FILE, LabelAudit, class_probabilities, save_contact_sheet
    from smec_fast.data.validate import validate_split

    trained, cfg, split = scored.trained, scored.config, scored.split
    validate_split(split, skip=False, what=scored.subset)  # one line naming a bad image, before any scoring
    given, clean = split.labels, None
    if labels:
        given, report = labels_from_file(split.names, split.labels, labels, split.num_classes)
        clean = split.labels
        log.info("%s: %d of %d labels differ from the dataset's", labels, report.changed, len(split))
    probs = class_probabilities(trained.model, scored.loader, len(split), split.num_classes, scored.amp)
    audit = LabelAudit(split, given, probs, clean=clean)
    out = Path(out) if out else scored.default_out("audit")
    audit.write_csv(out / AUDIT_FILE)
    summary = {"checkpoint": str(trained.path), "epoch": trained.epoch, "method": cfg.method, "dataset": cfg.dataset,
               "data": cfg.data, "split": scored.subset, "labels": labels or "the dataset's", **audit.summary()}
    atomic_write_json(out / "label_audit.json", summary)
    if sheet > 0:
        save_contact_sheet(audit, out / CONTACT_SHEET_FILE, count=sheet)
    return summary, out
