"""The training configuration: one typed dataclass, overridable from a YAML/JSON file and the CLI.

Precedence, lowest first: the dataclass defaults (the paper's recipe, sec. IV-B), the preset of the chosen
dataset (only the embedded synthetic dataset has one, so that the default command finishes in minutes on
a CPU), the baseline's official recipe when `--recipe official` asks for it, the config file, and the command
line. The resolved config is written next to every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from smec_fast.errors import ConfigError, first_line

METHODS = ("smec", "ce", "elr", "eac", "scn", "rul")
DATASETS = ("synthetic", "rafdb", "folder")
SWITCH = ("auto", "on", "off")  # auto: chosen for the device (smec_fast.precision, trainer.switch_on)
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# SMEC's two-piece splits in image terms. The paper's pieces are C x W/2 x H (sec. III-A): the face cut along
# its width into a left and a right half, grid 1x2 (one row, two columns).
SPLITS = {"left-right": (1, 2), "top-bottom": (2, 1)}


@dataclass
class TrainConfig:
    # --- data ---
    dataset: str = "synthetic"  # synthetic (embedded, generated) | rafdb | folder (class folders)
    data: str | None = None  # dataset root: RAF-DB folder holding basic/, or a folder with train/ and test/ (or val/)
    out: str = "runs/smec"  # output directory: config, log, checkpoint, metrics
    image_size: int = 224  # square input size; the paper uses 224 x 224
    max_train_samples: int | None = None  # seeded random subset of the training split, for quick runs
    max_test_samples: int | None = None  # seeded random subset of the test split
    val_fraction: float = 0.0  # hold out this fraction of the (noisy) training set to choose an epoch honestly
    synthetic_train_size: int = 2000  # images the synthetic training split generates
    synthetic_test_size: int = 700  # images the synthetic test split generates
    num_workers: int = 2  # loader workers: DataLoader processes, DALI threads or the cache's decoding threads
    loader: str = "auto"  # torch (DataLoader + PIL) | dali | cached (decoded once onto the device) | auto
    skip_bad_images: bool = False  # leave out missing or corrupt images (with a warning and a count)
    rafdb_images: str = "aligned"  # RAF-DB: aligned (100 x 100 faces) | original (photos aligned from landmarks)
    rafdb_landmarks: str = "manual"  # RAF-DB original photos: manual | auto landmark annotations

    # --- method (DESIGN.md steps 2-8) ---
    method: str = "smec"  # smec: CE + ELR + L_con | elr: CE + ELR | ce: cross-entropy | eac | scn | rul (baselines)
    grid: tuple[int, int] = (1, 2)  # split grid rows x cols: 1x2 width (paper), 2x1 height, 2x2, 4x4; 1x1 = flip
    # the grid in image terms: left-right (1x2, the paper) | top-bottom (2x1); given, it sets --grid; otherwise it
    # is filled in from the grid ("2x2", "4x4", "whole" for 1x1)
    split: str | None = None
    lambda_con: float | None = None  # weight of L_con; None: 2 for clean labels, 3 up to 40 % noise, 5 above
    con_warmup_epochs: float = 0.0  # ramp lambda_con linearly from 0 over this many epochs (0: off, as in the paper)
    cam_weight_grad: bool = False  # let L_con's gradient reach the classifier weight (EAC's code detaches it)
    detach_original: bool = False  # stop L_con's gradient through the original image's branch
    piece_bn_stats: bool = True  # the pieces' forward updates batch-norm running statistics (as EAC's code does)
    cls_loss: str = "elr"  # SMEC's classification loss: elr (CE + ELR, the paper) | ce (the Fig. 5 ablation)
    beta: float = 0.7  # ELR target momentum
    lambda_elr: float = 3.0  # ELR weight

    # --- baselines ---
    # shared: every method trains with this config's optimisation and augmentation (the SMEC paper's recipe, for
    # controlled comparisons) | official: each baseline as its authors' released code trains it (RECIPES)
    recipe: str = "shared"
    eac_lambda: float = 5.0  # EAC: weight of the flip attention consistency
    scn_beta: float = 0.7  # SCN: fraction of each batch in the high-importance group
    scn_margin_rank: float = 0.15  # SCN: rank regularisation margin between the groups' mean importance
    scn_margin_relabel: float = 0.2  # SCN: relabel when max prob exceeds the label's prob by this much
    scn_relabel_epoch: int = 10  # SCN: first epoch (0-based) that relabels

    # --- label noise (DESIGN.md step 10) ---
    noise_rate: float = 0.0  # symmetric noise rate applied to the training labels
    noise_file: str | None = None  # train on the labels of this EAC-format file instead (train_00001.jpg 5)
    noise_seed: int | None = None  # seed of the symmetric noise; None: same as seed

    # --- optimisation (sec. IV-B) ---
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-4  # Adam learning rate
    weight_decay: float = 1e-4
    lr_decay: float = 1.0  # ExponentialLR gamma per epoch; 1 = off (EAC's code uses 0.9)
    seed: int = 0  # model init, data order and flips

    # --- model ---
    pretrained: str | None = None  # state dict or checkpoint to start from (e.g. resnet18_msceleb.pth)
    pretrained_head: str = "auto"  # its classifier: keep | drop | auto (drop when its class names differ)

    # --- runtime ---
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    # autocast dtype: auto (bf16 on CUDA and on CPUs with AMX or AVX512-BF16, else fp32) | bf16 | fp16 (CUDA) | off
    amp: str = "auto"
    compile: str = "auto"  # torch.compile the model and the loss: auto (on CUDA) | on | off
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    channels_last: str = "auto"  # NHWC model and inputs: auto (on CUDA; on a CPU, when training in bf16) | on | off
    kernels: str = "fused"  # fused: registered ops (Triton on CUDA, reference elsewhere) | reference: plain PyTorch
    resume: bool = False  # continue the run in `out` from its last checkpoint
    dist_timeout: float = 600.0  # torchrun: seconds a process waits for the others before the job fails
    progress: bool = True  # show a progress bar
    profile: str | None = None  # START:STOP: torch.profiler trace and op table of those training steps (from 0)
    tensorboard: bool = False  # write the epochs' scalars under OUT/tensorboard (needs the tensorboard package)

    def __post_init__(self) -> None:
        self.grid = tuple(self.grid)
        if self.split is None:
            self.split = split_name(self.grid)

    @property
    def effective_noise_seed(self) -> int:
        return self.seed if self.noise_seed is None else self.noise_seed

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["grid"] = list(self.grid)
        return d

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the option at fault."""
        _choice("dataset", self.dataset, DATASETS)
        _choice("method", self.method, METHODS)
        _choice("amp", self.amp, AMP_MODES)
        _choice("cls_loss", self.cls_loss, ("elr", "ce"))
        _choice("recipe", self.recipe, RECIPE_CHOICES)
        _choice("kernels", self.kernels, ("fused", "reference"))
        _choice("compile", self.compile, SWITCH)
        _choice("compile_mode", self.compile_mode, COMPILE_MODES)
        _choice("channels_last", self.channels_last, SWITCH)
        _choice("loader", self.loader, ("auto", "torch", "dali", "cached"))
        _choice("rafdb_images", self.rafdb_images, ("aligned", "original"))
        _choice("pretrained_head", self.pretrained_head, ("auto", "keep", "drop"))
        _choice("rafdb_landmarks", self.rafdb_landmarks, ("manual", "auto"))
        if not 0.0 < self.scn_beta < 1.0:
            raise ConfigError(f"--scn-beta must be in (0, 1), got {self.scn_beta}")
        if self.dataset != "synthetic" and not self.data:
            raise ConfigError(f"--data is required with --dataset {self.dataset}")
        for name in ("image_size", "epochs", "batch_size", "synthetic_train_size", "synthetic_test_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{_flag(name)} must be at least 1, got {value}")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers must be >= 0, got {self.num_workers}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ConfigError(f"--grid must be ROWSxCOLS with both at least 1, got {self.grid}")
        if self.split != split_name(self.grid):
            if self.split not in SPLITS:
                raise ConfigError(f"--split must be one of {', '.join(SPLITS)}; got {self.split!r} "
                                  f"(other grids are chosen with --grid ROWSxCOLS)")
            raise ConfigError(f"--split {self.split} is grid {grid_text(SPLITS[self.split])}, but --grid is "
                              f"{grid_text(self.grid)}; give one of them")
        if not 0.0 <= self.noise_rate < 1.0:
            raise ConfigError(f"--noise-rate must be in [0, 1), got {self.noise_rate}")
        if self.noise_file and self.noise_rate > 0:
            raise ConfigError("give either --noise-file or --noise-rate, not both")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"--beta must be in [0, 1), got {self.beta}")
        for name in ("lr", "lr_decay", "dist_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "lambda_elr", "con_warmup_epochs", "eac_lambda", "scn_margin_rank",
                     "scn_margin_relabel", "scn_relabel_epoch"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.profile is not None:
            from smec_fast.monitor import parse_step_range

            parse_step_range(self.profile)
        if self.lambda_con is not None and self.lambda_con < 0:
            raise ConfigError(f"--lambda-con must be >= 0, got {self.lambda_con}")
        return self


def grid_text(grid: tuple[int, int]) -> str:
    return "x".join(map(str, grid))


def split_name(grid: tuple[int, int]) -> str:
    """A grid in image terms: left-right (1x2), top-bottom (2x1), whole (1x1, EAC's flip), else ROWSxCOLS."""
    for name, split_grid in SPLITS.items():
        if split_grid == tuple(grid):
            return name
    return "whole" if tuple(grid) == (1, 1) else grid_text(grid)


def describe_split(grid: tuple[int, int]) -> str:
    """'top-bottom (grid 2x1, pieces H/2 x W)' for the log."""
    rows, cols = grid
    h = "H" if rows == 1 else f"H/{rows}"
    w = "W" if cols == 1 else f"W/{cols}"
    return f"{split_name(grid)} (grid {grid_text(grid)}, pieces {h} x {w})"


def describe_recipe(cfg: "TrainConfig") -> str:
    """'official (SCN's released code): epochs 70, lr 0.001, ...' for the log, with the values the run changed."""
    if cfg.recipe == "shared" or cfg.method not in RECIPES:
        shared = "shared" if cfg.recipe == "shared" else f"official ({cfg.method}'s is the shared one)"
        return f"{shared}: epochs {cfg.epochs}, lr {cfg.lr:g}, lr_decay {cfg.lr_decay:g}, batch_size {cfg.batch_size}"
    parts = []
    for key, value in RECIPES[cfg.method].items():
        now = getattr(cfg, key)
        parts.append(f"{key} {now:g}" + ("" if now == value else f" (recipe {value:g}, overridden)"))
    return f"official ({cfg.method.upper()}'s released code): " + ", ".join(parts)


def default_lambda_con(noise_rate: float) -> float:
    """The paper's consistency weight (sec. IV-B): 2 for clean labels, 3 for 10-40 % noise, 5 for 50-60 %."""
    if noise_rate <= 0.0:
        return 2.0
    if noise_rate <= 0.4 + 1e-9:
        return 3.0
    return 5.0


# The embedded dataset is generated at a small size so that `smec-fast train` with no arguments learns
# well above chance on a 2-core CPU within a few minutes. The faces are drawn from scratch, without the
# MS-Celeb-1M initialisation the paper's 1e-4 learning rate assumes, so the preset trains faster.
PRESETS: dict[str, dict] = {
    "synthetic": {"image_size": 64, "epochs": 8, "batch_size": 32, "lr": 1e-3, "con_warmup_epochs": 2.0},
    "rafdb": {},
    "folder": {},
}

RECIPE_CHOICES = ("shared", "official")
# The config values of each baseline's official recipe, as its released code sets them; what the code does beyond
# config values (augmentation, relabelling rule, heads, per-group learning rates) lives with the method in
# smec_fast/methods.py. SMEC's own recipe is the paper's, the shared one; ce and elr have no FER code of their own.
# A recipe is a layer of defaults: the config file and the command line override it (the epoch budget, say).
RECIPES: dict[str, dict] = {
    # EAC, src/main.py: 60 epochs, Adam, ExponentialLR(0.9) stepped per epoch, batch 32, lambda 5; lr 2e-4, which
    # its README gives for a ResNet-18 backbone (the code's 1e-4 is for its ResNet-50).
    "eac": {"epochs": 60, "lr": 2e-4, "lr_decay": 0.9, "batch_size": 32, "eac_lambda": 5.0},
    # SCN, src/train.py: 70 epochs, Adam at its default lr 1e-3, ExponentialLR(0.9) per epoch, batch 64; it
    # relabels from its 10th epoch counted from 1 (0-based 9); the repository's README advises the rank margin 0.07
    # for batch 64 (0.15 was the paper's, for batch 1024).
    "scn": {"epochs": 70, "lr": 1e-3, "lr_decay": 0.9, "batch_size": 64, "scn_margin_rank": 0.07,
            "scn_relabel_epoch": 9},
    # RUL, src/main.py: 60 epochs, Adam, backbone and branches at 2e-4 (the classifier at 10x, in
    # methods.RulMethod), ExponentialLR(0.9) per epoch, batch 64.
    "rul": {"epochs": 60, "lr": 2e-4, "lr_decay": 0.9, "batch_size": 64},
}


def recipe_values(method: str, recipe: str) -> dict:
    """The config defaults `recipe` sets for `method` (empty for the shared recipe and for methods whose official
    recipe is the shared one)."""
    _choice("recipe", recipe, RECIPE_CHOICES)
    return dict(RECIPES.get(method, {})) if recipe == "official" else {}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _base_type(name: str) -> tuple[type, bool]:
    """(underlying type, optional?) of a config field."""
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def parse_grid(value) -> tuple[int, int]:
    """'1x2', '1,2', [1, 2] or (1, 2) -> (1, 2)."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
    else:
        parts = list(value)
    try:
        rows, cols = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--grid must look like 1x2 (rows x cols), got {value!r}") from None
    return rows, cols


def coerce(name: str, value, source: str):
    """Convert a raw value (a CLI string, or a YAML/JSON value) to the type of config field `name`."""
    if name not in FIELDS:
        raise ConfigError(unknown_key_message(name, source))
    base, optional = _base_type(name)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    try:
        if name == "grid":
            return parse_grid(value)
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[base]
        raise ConfigError(f"{source}: {_flag(name) if source == 'command line' else name} must be {kind}, "
                          f"got {value!r}") from None
    raise AssertionError(f"unhandled config type {base} for {name}")


def unknown_key_message(name: str, source: str) -> str:
    close = difflib.get_close_matches(name, list(FIELDS), n=1)
    hint = f" (did you mean {_flag(close[0]) if source == 'command line' else close[0]!r}?)" if close else ""
    shown = f"--{_flag(name)}" if source == "command line" else repr(name)
    return f"{source}: unknown option {shown}{hint}"


def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON mapping of config keys; unknown keys are rejected with the file's name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read it ({err.strerror or err})") from None
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as err:  # yaml and json raise different error types
        raise ConfigError(f"config file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{first_line(err)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of option names to values")
    source = f"config file {path}"
    return {key.replace("-", "_"): coerce(key.replace("-", "_"), value, source) for key, value in raw.items()}


def resolve_config(file_values: dict | None = None, cli_values: dict | None = None) -> TrainConfig:
    """Merge defaults < dataset preset < the method's recipe < file < command line into a validated TrainConfig."""
    given: dict = {}
    for layer in (file_values or {}, cli_values or {}):
        # --split and --grid name the same choice: one given on the command line overrides the file's other
        if "grid" in layer and "split" not in layer:
            given.pop("split", None)
        if "split" in layer and "grid" not in layer:
            given.pop("grid", None)
        given.update(layer)
    dataset = given.get("dataset", FIELDS["dataset"].default)
    if dataset not in PRESETS:
        _choice("dataset", dataset, DATASETS)
    method = given.get("method", FIELDS["method"].default)
    recipe = given.get("recipe", FIELDS["recipe"].default)
    values = {**PRESETS[dataset], **recipe_values(method, recipe), **given}
    if values.get("split") in SPLITS and "grid" not in values:
        values["grid"] = SPLITS[values["split"]]  # --split left-right|top-bottom chooses the grid
    return TrainConfig(**values).validate()


def config_from_dict(values: dict) -> TrainConfig:
    """Rebuild a config saved with a run (e.g. in a checkpoint), validating every key."""
    return TrainConfig(**{k: coerce(k, v, "saved config") for k, v in values.items()})


__all__ = [
    "TrainConfig",
    "METHODS",
    "DATASETS",
    "PRESETS",
    "FIELDS",
    "coerce",
    "default_lambda_con",
    "load_config_file",
    "resolve_config",
    "config_from_dict",
    "parse_grid",
    "SPLITS",
    "RECIPES",
    "RECIPE_CHOICES",
    "recipe_values",
    "split_name",
    "describe_split",
]
