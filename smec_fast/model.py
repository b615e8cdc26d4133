"""The network: torchvision's ResNet-18 returning logits and the layer4 feature map (docs/design.md step 1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from smec_fast.checkpoint import load_torch_file
from smec_fast.errors import CheckpointError

log = logging.getLogger(__name__)

FEATURE_CHANNELS = 512


class FerResNet18(ResNet):
    """ResNet-18 whose forward returns `(logits (B, K), features (B, 512, h, w))`.

    Parameter names are torchvision's (`conv1`, `layer1.0.conv1`, ..., `fc`), so torchvision and
    MS-Celeb-1M ResNet-18 state dicts load as they are. `fc.weight` is the CAM weight W of eq. 1.
    """

    has_cam = True  # the classifier reads pooled features, so fc.weight maps features to class evidence

    def __init__(self, num_classes: int = 7):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.features(x)  # (B, 512, h, w)
        logits = self.fc(torch.flatten(self.avgpool(feat), 1))  # (B, K)
        return logits, feat

    @property
    def cam_weight(self) -> torch.Tensor:
        return self.fc.weight  # (K, 512)


def feature_map_size(image_size: int) -> int:
    """Side of ResNet-18's layer4 map for a square input: every stride-2 stage rounds up (224 -> 7, 96 -> 3)."""
    side = image_size
    for _ in range(5):  # conv1, maxpool, layer2, layer3, layer4
        side = (side + 1) // 2
    return side


def embedding_branch(feature_side: int, dim: int = 64, dropout: float = 0.4) -> nn.Sequential:
    """RUL's branch from the layer4 map to a `dim`-d vector (its src/rul.py): batch norm without affine, dropout,
    flatten of the whole C x h x w map, a linear layer, batch norm. No pooling, so no class activation map."""
    return nn.Sequential(nn.BatchNorm2d(FEATURE_CHANNELS, eps=2e-5, affine=False), nn.Dropout(dropout),
                         nn.Flatten(), nn.Linear(FEATURE_CHANNELS * feature_side * feature_side, dim),
                         nn.BatchNorm1d(dim, eps=2e-5))


NO_CAM = ("this model classifies RUL's embedding of the whole feature map (--method rul --recipe official), "
          "which has no class activation map")


class EmbeddingResNet18(FerResNet18):
    """ResNet-18 classified through RUL's 64-d embedding of the flattened layer4 map (RUL's official recipe).

    `forward` returns `(fc(embedding(features)) (B, K), features (B, 512, h, w))` like FerResNet18, so training,
    evaluation and prediction treat both alike; the embedding fixes the input size (`image_size`). The classifier
    reads a flattened map, not a pooled one, so there is no class activation map.
    """

    has_cam = False

    def __init__(self, num_classes: int = 7, image_size: int = 224, dim: int = 64):
        super().__init__(num_classes)
        self.image_size = image_size
        self.embedding = embedding_branch(feature_map_size(image_size), dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.features(x)  # (B, 512, h, w)
        return self.fc(self.embedding(feat)), feat

    @property
    def cam_weight(self) -> torch.Tensor:
        raise CheckpointError(NO_CAM)


def build_model(head: str, num_classes: int, image_size: int) -> FerResNet18:
    """The network with the classifier `head` a method declares (smec_fast.methods, TrainingMethod.head):
    "pooled", FerResNet18's linear classifier on pooled features, or "embedding", EmbeddingResNet18's on RUL's
    embedding of the whole map."""
    if head == "embedding":
        return EmbeddingResNet18(num_classes, image_size)
    if head != "pooled":
        raise ValueError(f"unknown classifier head {head!r} (pooled or embedding)")
    return FerResNet18(num_classes)


# Layouts seen in public FER code: SCN/RUL wrap `resnet.children()[:-2]` in `features` (nn.Sequential),
# so `features.4` is `layer1`; DataParallel adds `module.`.
_SEQUENTIAL_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class LoadReport:
    """What `load_pretrained` did with each key."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the file did not provide
    unexpected: list[str] = field(default_factory=list)  # file keys the model does not have
    shape_mismatch: list[str] = field(default_factory=list)  # e.g. an fc for another number of classes
    dropped: list[str] = field(default_factory=list)  # the classifier, left out on purpose (--pretrained-head)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (kept initialised: {_short(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (ignored: {_short(self.unexpected)})")
        if self.shape_mismatch:
            parts.append(f"{len(self.shape_mismatch)} of another shape (kept initialised: {_short(self.shape_mismatch)})")
        if self.dropped:
            parts.append(f"classifier left out ({_short(self.dropped)}): trained from scratch")
        return "; ".join(parts)


def _short(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def read_weight_file(path: str | Path) -> dict:
    """torch.load a weight or checkpoint file safely (tensors and plain containers only)."""
    return load_torch_file(path, "weight file", "PyTorch weight file")


def extract_state_dict(obj, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a state dict or a checkpoint holding one."""
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                return extract_state_dict(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path}: holds no state dict (expected tensors, or a checkpoint with one of the "
                          f"keys {', '.join(_STATE_DICT_KEYS)})")


def _canonical_key(key: str) -> str:
    for prefix in ("module.", "backbone.", "model."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    if key.startswith("features."):
        head, _, rest = key[len("features."):].partition(".")
        if head in _SEQUENTIAL_CHILDREN:
            key = f"{_SEQUENTIAL_CHILDREN[head]}.{rest}"
    return key


HEAD_KEYS = ("fc.weight", "fc.bias")  # the classifier; everything else is the backbone
HEAD_CHOICES = ("auto", "keep", "drop")


def file_class_names(obj) -> tuple[str, ...] | None:
    """The class names a weight file records (smec_fast checkpoints and backbone files do), else None."""
    names = obj.get("class_names") if isinstance(obj, dict) else None
    return tuple(names) if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names) else None


def load_pretrained(model: nn.Module, path: str | Path, head: str = "auto",
                    class_names: tuple[str, ...] | None = None) -> LoadReport:
    """Load matching tensors of a state dict (or a checkpoint holding one) into `model`.

    Keys are matched after removing `module.`/`backbone.`/`model.` prefixes and mapping SCN's
    `features.N` layout. Tensors of another shape (an fc for 12k identities, say) are skipped and reported.
    A file that matches no parameter at all is refused.

    `head` decides the classifier (`fc`): "keep" loads it (refused when the file records other class names
    than `class_names`), "drop" initialises it afresh, "auto" keeps it unless the file records class names
    that differ from `class_names`. A classifier not loaded is drawn again from the generator's current
    state: a model built after `torch.manual_seed(s)` has the very classifier a backbone trained from seed
    `s` started from, which that backbone's features still favour (FER2013 at 96 px: 54 % test accuracy
    before the first step, against 28 % for a classifier drawn afresh).
    """
    if head not in HEAD_CHOICES:
        raise ValueError(f"head must be one of {', '.join(HEAD_CHOICES)}, got {head!r}")
    obj = read_weight_file(path)
    source = extract_state_dict(obj, path)
    theirs = file_class_names(obj)
    differ = theirs is not None and class_names is not None and tuple(class_names) != theirs
    if head == "keep" and differ:
        assert theirs is not None and class_names is not None
        raise CheckpointError(f"{path}: its classifier is for {', '.join(theirs)}, not this dataset's "
                              f"{', '.join(class_names)}; use --pretrained-head drop")
    drop_head = head == "drop" or (head == "auto" and differ)
    own = model.state_dict()
    report = LoadReport()
    update = {}
    for raw_key, tensor in source.items():
        key = _canonical_key(raw_key)
        if drop_head and key in HEAD_KEYS:
            report.dropped.append(key)
        elif key not in own:
            report.unexpected.append(raw_key)
        elif own[key].shape != tensor.shape:
            report.shape_mismatch.append(key)
        else:
            update[key] = tensor
            report.loaded.append(key)
    if not any(k in update for k, v in own.items() if v.is_floating_point()):
        raise CheckpointError(f"{path}: none of its {len(source)} tensors matches a parameter of "
                              f"{type(model).__name__} (first key: {next(iter(source), 'none')})")
    report.missing = [k for k in own if k not in update]
    model.load_state_dict(update, strict=False)
    head_module = getattr(model, "fc", None)
    if head_module is not None and not any(k in update for k in HEAD_KEYS):
        head_module.reset_parameters()
    log.info("pretrained weights %s: %s", path, report.summary())
    return report
