"""The training loop: train, evaluate every epoch, log, checkpoint atomically, resume.

Files a run writes under `cfg.out`:
    config.json     the resolved configuration
    train_labels.txt the training labels used (EAC format; noisy when noise was applied)
    log.csv         one row per epoch: losses, accuracies, images/s, input wait, eval time, peak memory
    checkpoint.pt   everything needed to resume, rewritten atomically after every epoch
    selected.pt     with a validation split: the model of the epoch of best validation accuracy (the one
                    metrics.json's selected_* figures describe), for `predict`, `export` and `backbone`
    metrics.json    the results contract (written once, when the run completes)
    label_audit.csv the final model's belief about every training label, most suspect first (smec_fast.audit)
    profile/        with --profile START:STOP: trace.json and ops.txt of those training steps
    tensorboard/    with --tensorboard: the epochs' scalars as TensorBoard event files

Every epoch's data order and flips derive from (seed, epoch), so a run resumed from its last checkpoint
repeats exactly the epochs an uninterrupted run would have trained.

`train` reads top to bottom: `build_run` makes a run's data, model, method, optimiser and loaders (restored from
its checkpoint with --resume), the epoch loop trains and evaluates, and `RunRecorder` owns every file above.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import platform
import time
from dataclasses import dataclass
from typing import cast
from pathlib import Path

import torch
from tqdm.auto import tqdm

from smec_fast.audit import AUDIT_FILE, LabelAudit, class_probabilities
from smec_fast.checkpoint import CHECKPOINT_FILE, CHECKPOINT_FORMAT, SELECTED_FILE, read_checkpoint
from smec_fast.config import TrainConfig, config_from_dict, describe_recipe
from smec_fast.data import FerData, ImageSplit, SplitLoader, build_data, default_loader, make_loader, write_label_file
from smec_fast.devices import resolve_device, switch_on
from smec_fast.distributed import (
    DistributedContext,
    all_reduce_sum,
    broadcast_from_main,
    convert_batchnorm,
    process_device,
    setup_distributed,
    shard_batch_size,
    teardown_distributed,
)
from smec_fast.errors import ConfigError, SmecFastError, first_line
from smec_fast.atomic import atomic_torch_save, atomic_write_json, atomic_write_text
from smec_fast.kernels import set_kernel_backend
from smec_fast.methods import TrainingMethod, build_method, method_class, narrowest_input_width
from smec_fast.metrics import evaluate
from smec_fast.model import build_model, load_pretrained
from smec_fast.monitor import (
    EpochMeter,
    StepProfiler,
    TensorBoardLog,
    parse_step_range,
    require_tensorboard,
    throughput_summary,
)
from smec_fast.precision import Precision, autocast_context, describe_cpu, resolve_precision
from smec_fast.provenance import source_revision
from smec_fast.version import __version__

log = logging.getLogger(__name__)

# Options that may change when a run is resumed; any other difference is refused.
RESUMABLE_CHANGES = {"out", "resume", "progress", "num_workers", "device", "epochs", "dist_timeout", "kernels",
                     "loader", "compile", "compile_mode", "channels_last", "amp", "profile", "tensorboard"}
LOG_INTERVAL = 20  # steps between progress-bar updates (each reads the loss back from the device)


class TrainingDiverged(SmecFastError):
    """The loss became NaN or infinite."""


class TrainingObjective(torch.nn.Module):
    """Model and method as one module, so that one forward computes a step's loss (DDP wraps this)."""

    def __init__(self, model: torch.nn.Module, method: torch.nn.Module):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, images, labels, index):
        return self.method(self.model, images, labels, index)


def train_one_epoch(objective: torch.nn.Module, method, optimizer, scaler, loader: SplitLoader, epoch: int,
                    cfg: TrainConfig, precision: Precision, meter: EpochMeter, bar: tqdm | None = None,
                    profiler: StepProfiler | None = None) -> dict[str, float]:
    """One pass over the training split; returns the mean of each loss part (over all processes) and the method's
    figures of the epoch (TrainingMethod.epoch_stats), and leaves the epoch's throughput in `meter`.

    `objective` may be the compiled TrainingObjective; nothing in the step reads the device back except the
    progress bar, every LOG_INTERVAL steps. `profiler` sees every step's index, counted across epochs.
    """
    objective.train()
    loader.set_epoch(epoch)
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    method.start_epoch(epoch, cfg.seed)
    steps_per_epoch = len(loader)
    first_step = epoch * steps_per_epoch
    meter.start()
    batches = iter(loader)
    while (batch := meter.fetch(batches)) is not None:
        images, labels, index = batch
        if profiler is not None:
            profiler.before_step(first_step + steps)
        meter.step_started()
        method.set_progress(epoch + steps / steps_per_epoch)
        images = images.contiguous(memory_format=precision.memory_format)
        with autocast_context(loader.device, precision.amp):
            loss, parts = objective(images, labels, index)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        method.end_step(index)  # per-sample state the step updated, shared with the other processes
        parts = {"loss": loss.detach(), **parts}
        for name, value in parts.items():
            sums[name] = sums[name] + value.float() if name in sums else value.float().clone()
        meter.step_finished(images.shape[0])
        if profiler is not None:
            profiler.after_step(first_step + steps)
        steps += 1
        if steps % LOG_INTERVAL == 0:
            meter.poll()
        if bar is not None:
            bar.update(1)
            # .item() is a host-device sync point: only at the log interval and the epoch's last step
            if steps % LOG_INTERVAL == 0 or steps == steps_per_epoch:
                bar.set_postfix({"loss": f"{(sums['loss'] / steps).item():.4f}",
                                 "img/s": f"{meter.images_per_s():,.0f}"})
    if steps == 0:
        raise ConfigError(f"no training batch: {len(loader.split)} images with --batch-size {cfg.batch_size}")
    names = list(sums)
    totals = all_reduce_sum(torch.stack([sums[n] for n in names]))  # each process saw equal shares
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    means = dict(zip(names, (totals / (steps * world)).tolist()))
    if not all(math.isfinite(v) for v in means.values()):
        raise TrainingDiverged(f"the training loss became {means['loss']} in epoch {epoch + 1}; "
                               f"try a lower --lr (now {cfg.lr})")
    return {**means, **method.epoch_stats()}


def _history_csv(history: list[dict]) -> str:
    columns: list[str] = []
    rows = []
    for entry in history:
        row = {"epoch": entry["epoch"], "lr": entry["lr"]}
        row.update({f"train_{k}": v for k, v in entry["train"].items()})
        for split in ("val", "test"):
            if entry.get(split):
                row[f"{split}_accuracy"] = entry[split]["accuracy"]
                row[f"{split}_balanced_accuracy"] = entry[split]["balanced_accuracy"]
        if "throughput" in entry:
            speed = entry["throughput"]
            row.update(images_per_s=speed["images_per_s"], data_wait_share=speed["data_wait_share"],
                       step_share=speed["step_share"], eval_s=speed["eval_s"],
                       peak_memory_mib=speed["peak_memory_mib"])
        row["time_s"] = entry["time_s"]
        columns += [c for c in row if c not in columns]
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    saved_cfg = config_from_dict(saved).to_dict()
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved_cfg.get(k) != now[k])
    if changed:
        detail = ", ".join(f"{k}: {saved_cfg.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(f"cannot resume {path}: the run was started with other options ({detail})")


def results(cfg: TrainConfig, data: FerData, history: list[dict], lambda_con: float | None,
            device: torch.device, precision: Precision, seconds: float) -> dict:
    """The results contract written to metrics.json."""
    final = history[-1]["test"]
    best = max(history, key=lambda h: h["test"]["accuracy"])
    out = {
        "method": cfg.method,
        "noise_rate": cfg.noise_rate if not cfg.noise_file else data.noise.rate,
        "epochs": len(history),
        "best_accuracy": best["test"]["accuracy"],
        "best_epoch": best["epoch"],
        "best_balanced_accuracy": max(h["test"]["balanced_accuracy"] for h in history),
        "final_accuracy": final["accuracy"],
        "final_balanced_accuracy": final["balanced_accuracy"],
        "per_class_accuracy": final["per_class_accuracy"],
        "confusion_matrix": final["confusion_matrix"],
        "class_names": list(data.class_names),
        "dataset": cfg.dataset,
        "num_train": len(data.train),
        "num_val": len(data.val) if data.val is not None else 0,
        "num_test": len(data.test),
        "noise": data.noise.to_dict(),
        "lambda_con": lambda_con,
        "history": history,
        "config": cfg.to_dict(),
        "precision": precision.to_dict(),
        "throughput": throughput_summary(history),
        # The host CPU's kind (family and model numbers, torch capability, native bf16): it sets a CPU run's
        # speed and precision, and feeds a GPU run's loaders.
        "environment": {"smec_fast": __version__, "torch": torch.__version__,
                        "python": platform.python_version(), "device": str(device), "cpu": describe_cpu(),
                        "git": source_revision()},
        "train_time_s": seconds,
    }
    if data.val is not None:
        chosen = max(history, key=lambda h: h["val"]["accuracy"])
        out["selected_epoch"] = chosen["epoch"]
        out["selected_accuracy"] = chosen["test"]["accuracy"]
        out["selected_balanced_accuracy"] = chosen["test"]["balanced_accuracy"]
    return out


def audit_labels(model: torch.nn.Module, method, loader: SplitLoader, data: FerData,
                 precision: Precision) -> LabelAudit:
    """The final model's belief about every training label (smec_fast.audit), from one pass over the training
    split in order and without flips; clean labels where noise was applied to known ones."""
    with loader.in_order():
        probs = class_probabilities(model, loader, len(data.train), data.train.num_classes, precision.amp)
    beliefs = method.sample_beliefs()  # ELR and SMEC keep running targets: their own belief
    return LabelAudit(data.train, data.train.labels.cpu(), probs,
                      clean=data.train.clean.cpu() if data.noise.source != "none" else None,
                      elr_targets=beliefs.float().cpu() if beliefs is not None else None)


def train(cfg: TrainConfig) -> dict:
    """Train one run as configured and return its metrics (also written to `cfg.out/metrics.json`).

    Under torchrun every process calls this; process 0 writes all files.
    """
    cfg.validate()
    source_revision()  # the commit is the one the run starts from, not whatever HEAD is when it ends
    device = resolve_device(cfg.device)
    context = setup_distributed(device, cfg.dist_timeout)
    try:
        return _train(cfg, process_device(device, context), context)
    except torch.distributed.DistError as err:
        raise SmecFastError(
            f"process {context.rank} of {context.world_size} lost contact with the others ({first_line(err)}); "
            f"a process died or hung. The last finished epoch is in {Path(cfg.out) / 'checkpoint.pt'}: run "
            f"the same command with --resume") from err
    finally:
        teardown_distributed()


def _train(cfg: TrainConfig, device: torch.device, context: DistributedContext) -> dict:
    run = build_run(cfg, device, context)
    recorder = RunRecorder(run)
    meter = EpochMeter(device, context.world_size)
    for epoch in range(run.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        with recorder.progress_bar(epoch, len(run.train_loader)) as bar:  # read at the log interval only
            train_stats = train_one_epoch(run.objective, run.method, run.optimizer, run.scaler, run.train_loader,
                                          epoch, cfg, run.precision, meter, None if bar.disable else bar,
                                          recorder.profiler)
        speed = meter.finish()
        entry = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"], "train": train_stats}
        run.scheduler.step()
        t_eval = time.perf_counter()
        if run.val_loader is not None:
            entry["val"] = evaluate(run.model, run.val_loader, run.data.class_names, run.precision.amp)
        entry["test"] = evaluate(run.model, run.test_loader, run.data.class_names, run.precision.amp)
        entry["throughput"] = {**speed, "eval_s": time.perf_counter() - t_eval}
        entry["time_s"] = time.perf_counter() - t0
        run.history.append(entry)
        recorder.epoch_done(entry)
    return recorder.finish()


@dataclass
class Run:
    """What one training run works with: built by build_run, fresh or from its last checkpoint."""

    cfg: TrainConfig
    device: torch.device
    context: DistributedContext
    precision: Precision
    data: FerData
    model: torch.nn.Module  # the network itself: evaluated, saved, exported
    method: TrainingMethod
    objective: torch.nn.Module  # model and method as one module, perhaps under DDP and torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader_kind: str
    train_loader: SplitLoader
    test_loader: SplitLoader
    val_loader: SplitLoader | None
    history: list[dict]  # one entry per finished epoch
    start_epoch: int  # epochs finished before this process started (resumed from the checkpoint)

    @property
    def compiled(self) -> bool:
        return switch_on(self.cfg.compile, self.device)


def build_run(cfg: TrainConfig, device: torch.device, context: DistributedContext) -> Run:
    """Data, model, method, optimiser and loaders of a run, restored from `cfg.out`'s checkpoint with --resume."""
    method_kind = method_class(cfg.method)
    method_kind.check_config(cfg)
    precision = resolve_precision(cfg.amp, cfg.channels_last, device, narrowest_input_width(cfg))
    if cfg.tensorboard:
        require_tensorboard()  # before any work, not after the data is loaded
    set_kernel_backend(cfg.kernels)
    checkpoint_path = Path(cfg.out) / CHECKPOINT_FILE
    # Process 0 reads the checkpoint (other nodes may not see the output folder) and shares it.
    state = broadcast_from_main(lambda: _load_resume_state(cfg, checkpoint_path), context)

    data = build_data(cfg)
    k = data.train.num_classes
    torch.manual_seed(cfg.seed)
    model: torch.nn.Module = build_model(method_kind.head(cfg.recipe), k, cfg.image_size)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained, cfg.pretrained_head, data.class_names)
    method = build_method(cfg, data.train.labels, k, data.noise.rate, clean_labels=data.train.clean)
    if state is not None:
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
    if context.enabled:
        model = convert_batchnorm(model, device)  # statistics over the global batch
        method = convert_batchnorm(method, device)
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    method.to(device)
    objective: torch.nn.Module = TrainingObjective(model, method)
    if context.enabled:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)  # batch norm statistics are global already; sample state is synced
    if switch_on(cfg.compile, device):
        # Model and loss compile as one graph (fused ops included); evaluation runs the model eagerly.
        objective = cast(torch.nn.Module, torch.compile(objective, mode=None if cfg.compile_mode == "default"
                                                        else cfg.compile_mode))
    # Methods with heads of their own (SCN's attention, RUL's uncertainty) train them with the model; a recipe may
    # give a part its own learning rate (RUL's classifier).
    # The fused Adam runs on CUDA and CPU alike: on the 2-core CPU it takes 9 ms per ResNet-18 step against the
    # foreach implementation's 55-61 ms.
    optimizer = torch.optim.Adam(method.param_groups(model, cfg.lr), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.amp == "fp16")
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch = state["history"], state["epoch"]
        if context.is_main:
            log.info("resuming %s after epoch %d of %d", cfg.out, start_epoch, cfg.epochs)

    kind = cfg.loader if cfg.loader != "auto" else default_loader(device, data.train, cfg.image_size)

    def loader(split: ImageSplit, train: bool = False) -> SplitLoader:
        return make_loader(kind, split, cfg.image_size, shard_batch_size(cfg.batch_size, context), device, train,
                           seed=cfg.seed, num_workers=cfg.num_workers, shard_id=context.rank,
                           num_shards=context.world_size, hflip=method.loader_hflip)

    return Run(cfg=cfg, device=device, context=context, precision=precision, data=data, model=model,
               method=method, objective=objective, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               loader_kind=kind, train_loader=loader(data.train, train=True), test_loader=loader(data.test),
               val_loader=loader(data.val) if data.val is not None else None, history=history,
               start_epoch=start_epoch)


class RunRecorder:
    """What a run writes under `cfg.out` (only process 0 writes): config.json and train_labels.txt when it starts;
    after every epoch the log line, log.csv, TensorBoard's scalars, selected.pt (a new best validation epoch) and
    checkpoint.pt; the --profile trace of its steps; at the end metrics.json and label_audit.csv."""

    def __init__(self, run: Run):
        self.run = run
        cfg, self.main = run.cfg, run.context.is_main
        self.out = Path(cfg.out)
        self.started = time.perf_counter() - sum(h["time_s"] for h in run.history)
        self.best_val = max((h["val"]["accuracy"] for h in run.history if h.get("val")), default=-math.inf)
        self.profiler = StepProfiler(*parse_step_range(cfg.profile), self.out / "profile", run.device) \
            if cfg.profile and self.main else None
        self.board = TensorBoardLog(self.out / "tensorboard", run.start_epoch) if cfg.tensorboard and self.main \
            else None
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp"):  # left by a process killed while writing a file atomically
            stale.unlink(missing_ok=True)
        atomic_write_json(self.out / "config.json", cfg.to_dict())
        write_label_file(self.out / "train_labels.txt", run.data.train.names, run.data.train.labels)
        data, context = run.data, run.context
        log.info("%s on %s: %d train / %d test images, %d classes, noise %.1f %% (%s), device %s, %s loader%s%s",
                 cfg.method, cfg.dataset, len(data.train), len(data.test), data.train.num_classes,
                 100 * data.noise.rate, data.noise.source, run.device, run.loader_kind,
                 f", {context.world_size} processes" if context.enabled else "", ", compiled" if run.compiled else "")
        log.info("precision: %s", run.precision.describe())
        for line in run.method.describe():
            log.info("%s", line)
        log.info("recipe: %s", describe_recipe(cfg))

    def progress_bar(self, epoch: int, steps: int) -> tqdm:
        """The epoch's progress bar (disabled but for process 0 with --progress)."""
        cfg = self.run.cfg
        return tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and self.main),
                    leave=False, dynamic_ncols=True)

    def epoch_done(self, entry: dict) -> None:
        """Report and save a finished epoch; the checkpoint last, so that a run killed before it repeats the epoch."""
        if not self.main:
            return
        run, cfg = self.run, self.run.cfg
        train_stats, speed = entry["train"], entry["throughput"]
        message = (f"epoch {entry['epoch']}/{cfg.epochs}  loss {train_stats['loss']:.4f}  "
                   f"test acc {entry['test']['accuracy']:.2f}  bal {entry['test']['balanced_accuracy']:.2f}  "
                   f"({entry['time_s']:.1f} s: {speed['images_per_s']:,.0f} img/s, input wait "
                   f"{100 * speed['data_wait_share']:.0f} %, eval {speed['eval_s']:.1f} s, "
                   f"peak {speed['peak_memory_mib']:,.0f} MiB {speed['memory']})")
        tqdm.write(message) if cfg.progress else log.info(message)
        if self.board is not None:
            self.board.write(entry)
        atomic_write_text(self.out / "log.csv", _history_csv(run.history))
        # What `evaluate`, `predict`, `export` and `backbone` read; the checkpoint adds what resuming needs.
        model_state = {"format": CHECKPOINT_FORMAT, "epoch": entry["epoch"], "config": cfg.to_dict(),
                       "class_names": list(run.data.class_names), "model": run.model.state_dict(),
                       "history": run.history}
        if "val" in entry and entry["val"]["accuracy"] > self.best_val:  # the first best, as results() chooses
            self.best_val = entry["val"]["accuracy"]
            # Written before the checkpoint: a run killed between the two redoes this epoch and writes it again.
            atomic_torch_save({**model_state, "chosen_by": "validation accuracy"}, self.out / SELECTED_FILE)
        atomic_torch_save({**model_state, "method": run.method.state_dict(), "optimizer": run.optimizer.state_dict(),
                           "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict()},
                          self.out / CHECKPOINT_FILE)

    def finish(self) -> dict:
        """The run's metrics (every process computes them; process 0 writes them with the label audit)."""
        run = self.run
        if self.profiler is not None:
            self.profiler.close()  # the run ended before the profile's last step
        if self.board is not None:
            self.board.close()
        metrics = results(run.cfg, run.data, run.history, run.method.lambda_con, run.device, run.precision,
                          time.perf_counter() - self.started)
        metrics.update(loader=run.loader_kind, compiled=run.compiled)
        if self.main and "selected_epoch" in metrics and \
                _selected_epoch(self.out / SELECTED_FILE) == metrics["selected_epoch"]:
            metrics["selected_checkpoint"] = SELECTED_FILE
        audit = audit_labels(run.model, run.method, run.train_loader, run.data, run.precision)
        if run.context.enabled:
            metrics["environment"]["processes"] = run.context.world_size
        if self.main:
            audit.write_csv(self.out / AUDIT_FILE)
            metrics["label_audit"] = audit.summary()
            atomic_write_json(self.out / "metrics.json", metrics)
        return metrics


def _load_resume_state(cfg: TrainConfig, checkpoint_path: Path) -> dict | None:
    """The checkpoint to continue from (None to start afresh); refuses to overwrite a finished run."""
    out = checkpoint_path.parent
    if not cfg.resume and (checkpoint_path.exists() or (out / "metrics.json").exists()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume and checkpoint_path.exists():
        state = read_checkpoint(checkpoint_path)
        _check_resumable(state["config"], cfg, checkpoint_path)
        return state
    if cfg.resume:
        log.info("%s holds no checkpoint yet; starting a new run", out)
    return None


def _selected_epoch(path: Path) -> int | None:
    """The epoch a selected.pt holds (None without one, e.g. for a run resumed from before it was kept)."""
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True).get("epoch", 0))
