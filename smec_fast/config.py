"""The training configuration: one typed dataclass, overridable from a YAML/JSON file and the CLI.

Precedence, lowest first: the dataclass defaults (the paper's recipe, sec. IV-B), the preset of the chosen
dataset (only the embedded synthetic dataset has one, so that the default command finishes in minutes on
a CPU), the method's official recipe when `--recipe official` asks for it (declared by the method's class,
smec_fast.methods), the config file, and the command line. The resolved config is written next to every run.

The methods (their names, recipes and options) are read from smec_fast.methods when a config is resolved or
validated, not when this module is imported, so that the command line starts without loading torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from smec_fast.errors import ConfigError, first_line
from smec_fast.grid import grid_text, parse_grid, parse_split, split_name

log = logging.getLogger(__name__)

DATASETS = ("synthetic", "rafdb", "folder")
SUBSETS = ("test", "train")  # the images of a dataset that evaluate and audit score
SWITCH = ("auto", "on", "off")  # auto: chosen for the device (smec_fast.precision, devices.switch_on)
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LOADERS = ("auto", "torch", "dali", "cached")
RAFDB_IMAGES = ("aligned", "original")
RAFDB_LANDMARKS = ("manual", "auto")
PRETRAINED_HEADS = ("auto", "keep", "drop")
CLS_LOSSES = ("elr", "ce")
KERNELS = ("fused", "reference")
RECIPE_CHOICES = ("shared", "official")


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

    # --- method (docs/design.md steps 2-8) ---
    method: str = "smec"  # smec: CE + ELR + L_con | elr: CE + ELR | ce: cross-entropy | eac | scn | rul (baselines)
    # split grid rows x cols: 1x2 width (the paper), 2x1 height, 2x2, 4x4; 1x1 = EAC's whole-image flip. `--split
    # left-right|top-bottom` is another spelling of 1x2 and 2x1; config.json names the grid so too ("split").
    grid: tuple[int, int] = (1, 2)
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

    # --- label noise (docs/design.md step 10) ---
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
        rows, cols = self.grid  # a list from JSON or YAML becomes the tuple the field holds
        self.grid = (rows, cols)

    @property
    def effective_noise_seed(self) -> int:
        return self.seed if self.noise_seed is None else self.noise_seed

    @property
    def split(self) -> str:
        """The grid in image terms: left-right, top-bottom, whole (1x1) or ROWSxCOLS."""
        return split_name(self.grid)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["grid"] = list(self.grid)
        d["split"] = self.split  # for readers of config.json; config_from_dict reads the grid
        return d

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the option at fault."""
        _choice("dataset", self.dataset, DATASETS)
        _choice("method", self.method, method_names())
        _choice("amp", self.amp, AMP_MODES)
        _choice("cls_loss", self.cls_loss, CLS_LOSSES)
        _choice("recipe", self.recipe, RECIPE_CHOICES)
        _choice("kernels", self.kernels, KERNELS)
        _choice("compile", self.compile, SWITCH)
        _choice("compile_mode", self.compile_mode, COMPILE_MODES)
        _choice("channels_last", self.channels_last, SWITCH)
        _choice("loader", self.loader, LOADERS)
        _choice("rafdb_images", self.rafdb_images, RAFDB_IMAGES)
        _choice("pretrained_head", self.pretrained_head, PRETRAINED_HEADS)
        _choice("rafdb_landmarks", self.rafdb_landmarks, RAFDB_LANDMARKS)
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


def method_names() -> tuple[str, ...]:
    """The registered methods' names (smec_fast.methods)."""
    from smec_fast.methods import method_names as registered

    return registered()


def official_recipe(method: str) -> dict:
    """The config values of `method`'s official recipe, as its class declares them (empty when the shared recipe
    is its own, or for an unknown method, which validation reports)."""
    from smec_fast.methods import method_class

    try:
        return dict(method_class(method).official_recipe)
    except ValueError:
        return {}


def describe_recipe(cfg: "TrainConfig") -> str:
    """'official (SCN's released code): epochs 70, lr 0.001, ...' for the log, with the values the run changed."""
    recipe = official_recipe(cfg.method)
    if cfg.recipe == "shared" or not recipe:
        shared = "shared" if cfg.recipe == "shared" else f"official ({cfg.method}'s is the shared one)"
        return f"{shared}: epochs {cfg.epochs}, lr {cfg.lr:g}, lr_decay {cfg.lr_decay:g}, batch_size {cfg.batch_size}"
    parts = []
    for key, value in recipe.items():
        now = getattr(cfg, key)
        parts.append(f"{key} {now:g}" + ("" if now == value else f" (recipe {value:g}, overridden)"))
    return f"official ({cfg.method.upper()}'s released code): " + ", ".join(parts)


# The embedded dataset is generated at a small size so that `smec-fast train` with no arguments learns
# well above chance on a 2-core CPU within a few minutes. The faces are drawn from scratch, without the
# MS-Celeb-1M initialisation the paper's 1e-4 learning rate assumes, so the preset trains faster.
PRESETS: dict[str, dict] = {
    "synthetic": {"image_size": 64, "epochs": 8, "batch_size": 32, "lr": 1e-3, "con_warmup_epochs": 2.0},
    "rafdb": {},
    "folder": {},
}


def recipe_values(method: str, recipe: str) -> dict:
    """The config defaults `recipe` sets for `method` (empty for the shared recipe and for methods whose official
    recipe is the shared one)."""
    _choice("recipe", recipe, RECIPE_CHOICES)
    return official_recipe(method) if recipe == "official" else {}


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


def option_values(raw: dict, source: str) -> dict:
    """One layer of options (a config file, the command line, a sweep variant) as config fields: each value coerced
    to its field's type; `split` is another spelling of `grid`, and where both are given they must agree."""
    raw = {key.replace("-", "_"): value for key, value in raw.items()}
    values = {key: coerce(key, value, source) for key, value in raw.items() if key != "split"}
    if "split" in raw:
        grid = parse_split(raw["split"])
        if "grid" in values and values["grid"] != grid:
            raise ConfigError(f"--split {raw['split']} is grid {grid_text(grid)}, but --grid is "
                              f"{grid_text(values['grid'])}; give one of them")
        values["grid"] = grid
    return values


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
    return option_values(raw, f"config file {path}")


def resolve_config(file_values: dict | None = None, cli_values: dict | None = None,
                   warn_unused: bool = False) -> TrainConfig:
    """Merge defaults < dataset preset < the method's recipe < file < command line into a validated TrainConfig.
    The layers are config fields (option_values); a grid given on the command line, as --grid or --split,
    overrides the file's. With `warn_unused`, an option given that only other methods read is warned of."""
    given = {**(file_values or {}), **(cli_values or {})}
    dataset = given.get("dataset", FIELDS["dataset"].default)
    if dataset not in PRESETS:
        _choice("dataset", dataset, DATASETS)
    method = given.get("method", FIELDS["method"].default)
    recipe = given.get("recipe", FIELDS["recipe"].default)
    values = {**PRESETS[dataset], **recipe_values(method, recipe), **given}
    cfg = TrainConfig(**values).validate()
    if warn_unused:
        from smec_fast.methods import options_of_others

        others = options_of_others(cfg.method)
        for key in sorted(k for k in given if k in others):
            log.warning("--%s is read by %s only; --method %s ignores it", _flag(key), ", ".join(others[key]),
                        cfg.method)
    return cfg


def config_from_dict(values: dict) -> TrainConfig:
    """Rebuild a config saved with a run (e.g. in a checkpoint), validating every key. Its `split` only names its
    grid (TrainConfig.to_dict), so the grid is read and the name left."""
    return TrainConfig(**{k: coerce(k, v, "saved config") for k, v in values.items() if k != "split"})


__all__ = [
    "TrainConfig",
    "DATASETS",
    "SUBSETS",
    "PRESETS",
    "FIELDS",
    "coerce",
    "option_values",
    "load_config_file",
    "resolve_config",
    "config_from_dict",
    "RECIPE_CHOICES",
    "recipe_values",
    "official_recipe",
    "method_names",
    "describe_recipe",
]
