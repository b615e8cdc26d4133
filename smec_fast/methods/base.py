"""What every training method is, and the registry that finds one by name.

A method is a module `(model, images, labels, index) -> (loss, parts)`, where `parts` maps a name to a detached
scalar tensor for logging. Nothing in a step reads a tensor back to the host, so a step never waits on the
device. Methods with their own parameters (SCN's attention head, RUL's uncertainty head) are trained with the
model; methods with per-sample state (ELR targets, SCN's relabelled labels) keep it in buffers, so it travels
with checkpoints. Randomness (EAC's erasing, RUL's pairing) comes from a generator seeded by (seed, epoch) in
`start_epoch`, so resumed runs repeat it exactly.

Each method's class declares, in one place, everything the rest of the package needs to know about it: its
name, the config options it reads, its authors' official recipe, the classifier head it trains, whether its loss
needs class activation maps, and how it is built from a config (with SMEC's default consistency weight). `register` adds a class to the registry that
`smec_fast.config` (names, recipes), the trainer and inference read; nothing outside a method's module names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

import smec_fast.seeding as seeding
from smec_fast.augment import flip_or_noise_choice, gaussian_pixel_noise, mirror, random_erasing
from smec_fast.distributed import shard_of_batch, sync_rows_

if TYPE_CHECKING:  # the config is read by attribute; importing it would close an import loop
    from smec_fast.config import TrainConfig

HEADS = ("pooled", "embedding")  # model.build_model: the linear classifier on pooled features, or RUL's embedding


class TrainingMethod(nn.Module):
    """Base class: a loss over (model, batch), its declaration, and the hooks the trainer calls."""

    # --- declaration (class attributes; `register` checks them) ---
    name: ClassVar[str] = ""
    # the TrainConfig fields the method reads beyond the shared ones; setting one for another method is warned of
    options: ClassVar[tuple[str, ...]] = ()
    # config values of `--recipe official`, as the method's authors' released code sets them (empty: the shared
    # recipe is its own); a layer of defaults that a config file and the command line override
    official_recipe: ClassVar[dict] = {}
    uses_cam: ClassVar[bool] = False  # its loss compares class activation maps, so its head must pool (has a CAM)

    # --- per-run state the trainer reads ---
    sample_state: tuple[str, ...] = ()  # buffers of shape (N, ...) a step updates at its samples' indices
    loader_hflip = True  # the training loader mirrors half its images; a method that augments otherwise says no
    lambda_con: float | None = None  # the consistency weight a run reports in metrics.json (SMEC's)

    @classmethod
    def from_config(cls, cfg: "TrainConfig", labels: torch.Tensor, num_classes: int, noise_rate: float,
                    clean_labels: torch.Tensor | None = None) -> "TrainingMethod":
        """The method for a training split with these (possibly noisy) labels; `noise_rate` is the measured rate
        of the labels trained on, `clean_labels`, where known, only feeds figures a method reports."""
        return cls()

    @classmethod
    def head(cls, recipe: str) -> str:
        """The classifier head the network needs under `recipe` (one of HEADS)."""
        return "pooled"

    @classmethod
    def check_config(cls, cfg: "TrainConfig") -> None:
        """Raise ConfigError for a config the method cannot train (before any data is read)."""

    @classmethod
    def narrowest_input_width(cls, cfg: "TrainConfig") -> int:
        """Width in pixels of the narrowest image the network sees in a training step."""
        return cfg.image_size

    def describe(self) -> list[str]:
        """Lines the trainer logs about this run's method settings."""
        return []

    # --- hooks ---
    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """The optimizer's parameter groups: the model's and the method's own parameters at `lr`."""
        return [{"params": list(model.parameters()) + list(self.parameters()), "lr": lr}]

    def end_step(self, index: torch.Tensor) -> None:
        """Called after every optimizer step: applies per-sample updates the step deferred and, under torchrun,
        gives every process the per-sample updates all processes made this step."""
        for name in self.sample_state:
            sync_rows_(self.get_buffer(name), index)

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Called before every training epoch."""

    def set_progress(self, epochs_done: float) -> None:
        """Called before every step with the fraction of training done, in epochs."""

    def sample_beliefs(self) -> torch.Tensor | None:
        """(N, K) the method's own running belief about each training sample's class (ELR's targets), which the
        label audit reports beside the model's; None for a method that keeps none."""
        return None

    def epoch_stats(self) -> dict[str, float]:
        """Called after every training epoch: figures of the epoch, added to its training row (log.csv's
        train_* columns, metrics.json's history) beside the mean loss parts."""
        return {}


_REGISTRY: dict[str, type[TrainingMethod]] = {}


def register(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator: make a method available by its `name` (to `--method`, sweeps, recipes and checkpoints)."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"{cls.__name__}: a method needs a name of its own, got {cls.name!r}")
    for recipe in ("shared", "official"):
        if cls.head(recipe) not in HEADS:
            raise ValueError(f"{cls.__name__}: head {cls.head(recipe)!r} is not one of {', '.join(HEADS)}")
        if cls.uses_cam and cls.head(recipe) != "pooled":
            raise ValueError(f"{cls.__name__}: its loss uses CAMs, which only a pooled head has ({recipe} recipe)")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(_REGISTRY)


def method_class(name: str) -> type[TrainingMethod]:
    """The class registered as `name`; ValueError for an unknown name (config validation names the option)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(_REGISTRY)})") from None


def options_of_others(name: str) -> dict[str, tuple[str, ...]]:
    """config field -> the other methods that read it, for the fields `name`'s method does not read."""
    own = set(method_class(name).options)
    found: dict[str, list[str]] = {}
    for other, cls in _REGISTRY.items():
        for option in cls.options:
            if other != name and option not in own:
                found.setdefault(option, []).append(other)
    return {option: tuple(names) for option, names in found.items()}


def official_recipes() -> dict[str, dict]:
    """method name -> the config values of its official recipe, for the methods that have one."""
    return {name: dict(cls.official_recipe) for name, cls in _REGISTRY.items() if cls.official_recipe}


def build_method(cfg: "TrainConfig", labels: torch.Tensor, num_classes: int, noise_rate: float,
                 clean_labels: torch.Tensor | None = None) -> TrainingMethod:
    """The objective of `cfg.method` for a training split with these (possibly noisy) labels."""
    return method_class(cfg.method).from_config(cfg, labels, num_classes, noise_rate, clean_labels)


def narrowest_input_width(cfg: "TrainConfig") -> int:
    """Width in pixels of the narrowest image the network sees in a training step of `cfg`'s method (SMEC's
    pieces, else the whole image)."""
    return method_class(cfg.method).narrowest_input_width(cfg)


def model_head(cfg: "TrainConfig") -> str:
    """The classifier head `cfg`'s method trains under its recipe (model.build_model)."""
    return method_class(cfg.method).head(cfg.recipe)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return seeding.stream("method", seed, epoch, stream)


class PixelNoise:
    """Gaussian pixel noise drawn on the images' device from a stream seeded by (seed, epoch, process), created
    at the epoch's first batch (the device is known then). Under torchrun each process draws its own images'
    noise, so the values (not which images get them) differ from a one-process run."""

    def __init__(self, stream: int):
        self.stream = stream
        self.keys = (0, 0)
        self.generator: torch.Generator | None = None

    def start_epoch(self, seed: int, epoch: int) -> None:
        self.keys = (seed, epoch)
        self.generator = None

    def __call__(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        if self.generator is None or self.generator.device != images.device:
            rank = shard_of_batch()[0]
            self.generator = seeding.device_stream("pixel-noise", images.device, *self.keys, self.stream, rank)
        return gaussian_pixel_noise(images, which.to(images.device, non_blocking=True), self.generator)


def basic_augmentation(images: torch.Tensor, generator: torch.Generator, noise: PixelNoise) -> torch.Tensor:
    """SCN's and RUL's training augmentation, in their order: the "basic augmentation" (half the images either
    mirrored or given Gaussian noise, a quarter each), then random erasing (p 0.5, area 2-25 %)."""
    shard = shard_of_batch()
    flip, add_noise = flip_or_noise_choice(images.shape[0], generator, shard=shard)
    images = mirror(images, flip.to(images.device, non_blocking=True))
    images = noise(images, add_noise)
    return random_erasing(images, generator, p=0.5, scale=(0.02, 0.25), shard=shard)
