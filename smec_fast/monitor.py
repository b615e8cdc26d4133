"""What a run reports about its own speed: throughput and input wait per epoch, profiles, TensorBoard.

Nothing here adds a host-device synchronisation inside a training step. The time spent waiting for the next
batch is host time around fetching it; on CUDA the time in the step comes from CUDA events recorded around
each step and read at the log interval, when the trainer reads the device back anyway; on a CPU, where the
step runs synchronously, it is host time.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import psutil
import torch

from smec_fast.errors import ConfigError
from smec_fast.atomic import atomic_write_text

log = logging.getLogger(__name__)

MIB = 2**20


class EpochMeter:
    """Images/s, input wait, time in the step and peak memory of one training epoch.

    Per epoch: `start()`, then for every step `fetch(iterator)` (the timed wait for the batch),
    `step_started()` and `step_finished(batch_size)`; `poll()` at the log interval; `finish()` returns the
    figures. `world` processes train equal shares, so the job's images/s is `world` times this process's.
    """

    def __init__(self, device: torch.device, world: int = 1):
        self.device = device
        self.cuda = device.type == "cuda"
        self.world = world
        self._process = psutil.Process()
        self.start()

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss = self._process.memory_info().rss
        self.images = 0
        self.wait_s = 0.0
        self.step_s = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._step_start: torch.cuda.Event | float | None = None
        self.started = time.perf_counter()

    def fetch(self, iterator):
        """The iterator's next batch (None at its end), timing the wait for it."""
        t = time.perf_counter()
        batch = next(iterator, None)
        self.wait_s += time.perf_counter() - t
        return batch

    def step_started(self) -> None:
        if self.cuda:
            self._step_start = torch.cuda.Event(enable_timing=True)
            self._step_start.record()
        else:
            self._step_start = time.perf_counter()

    def step_finished(self, batch_size: int) -> None:
        self.images += batch_size
        start = self._step_start
        if isinstance(start, torch.cuda.Event):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((start, end))
        elif start is not None:
            self.step_s += time.perf_counter() - start

    def poll(self, wait: bool = False) -> None:
        """Fold in the CUDA event times of the steps the device has finished (with `wait`, of all of them,
        waiting for the device) and sample the resident memory; call at the log interval."""
        done = 0
        for start, end in self._events:
            if not wait and not end.query():
                break
            end.synchronize()
            self.step_s += start.elapsed_time(end) / 1000
            done += 1
        del self._events[:done]
        self._rss = max(self._rss, self._process.memory_info().rss)

    def images_per_s(self) -> float:
        """The job's training images per second so far this epoch (host clock)."""
        return self.world * self.images / max(time.perf_counter() - self.started, 1e-9)

    def finish(self) -> dict:
        self.poll(wait=True)
        train_s = time.perf_counter() - self.started
        if self.cuda:
            peak, memory = torch.cuda.max_memory_allocated(self.device), "cuda allocated"
        else:
            peak, memory = self._rss, "resident"
        return {"images": self.world * self.images, "train_s": train_s,
                "images_per_s": self.world * self.images / max(train_s, 1e-9),
                "data_wait_s": self.wait_s, "data_wait_share": self.wait_s / max(train_s, 1e-9),
                "step_share": min(1.0, self.step_s / max(train_s, 1e-9)),
                "peak_memory_mib": peak / MIB, "memory": memory}


def throughput_summary(history: list[dict]) -> dict:
    """The run's throughput from its epochs: means over the epochs after the first (which also pays for
    compilation, workers starting and caches filling) when there are several."""
    epochs = [h["throughput"] for h in history if "throughput" in h]
    if not epochs:
        return {}
    steady = epochs[1:] or epochs
    mean = lambda key: sum(e[key] for e in steady) / len(steady)  # noqa: E731
    return {"images_per_s": mean("images_per_s"), "first_epoch_images_per_s": epochs[0]["images_per_s"],
            "data_wait_share": mean("data_wait_share"), "step_share": mean("step_share"),
            "eval_s": mean("eval_s"), "peak_memory_mib": max(e["peak_memory_mib"] for e in epochs),
            "memory": epochs[-1]["memory"], "epochs_averaged": len(steady)}


def parse_step_range(value: str) -> tuple[int, int]:
    """'START:STOP' -> (start, stop), 0 <= start < stop; ConfigError naming --profile otherwise."""
    try:
        start, stop = (int(part) for part in value.split(":"))
    except ValueError:
        raise ConfigError(f"--profile must be START:STOP (training steps, e.g. 5:10), got {value!r}") from None
    if not 0 <= start < stop:
        raise ConfigError(f"--profile START:STOP needs 0 <= START < STOP, got {value!r}")
    return start, stop


class StepProfiler:
    """torch.profiler over training steps [start, stop) of the run (counted from 0 across epochs).

    Writes `out/trace.json` (Chrome trace format: Perfetto, chrome://tracing) and `out/ops.txt` (ops and
    kernels by self time, CPU and, on CUDA, device), then lets training go on unprofiled.
    """

    def __init__(self, start: int, stop: int, out: Path, device: torch.device):
        self.start, self.stop = start, stop
        self.out = Path(out)
        self.device = device
        self._profile: torch.profiler.profile | None = None
        self.done = False

    def before_step(self, step: int) -> None:
        if step == self.start and not self.done:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profile = torch.profiler.profile(activities=activities, record_shapes=True)
            self._profile.start()
            log.info("profiling training steps %d to %d", self.start, self.stop - 1)

    def after_step(self, step: int) -> None:
        if self._profile is not None and step == self.stop - 1:
            self.close()

    def close(self) -> None:
        """Stop and write the profile (also when the run ended before step `stop`)."""
        if self._profile is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        profile, self._profile = self._profile, None
        profile.stop()
        self.done = True
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".trace.json.tmp"
        profile.export_chrome_trace(str(tmp))
        os.replace(tmp, self.out / "trace.json")
        averages = profile.key_averages()
        tables = [f"training steps {self.start} to {self.stop - 1}, by self CPU time\n",
                  averages.table(sort_by="self_cpu_time_total", row_limit=60)]
        if self.device.type == "cuda":
            tables += ["\nby self CUDA time\n", averages.table(sort_by="self_device_time_total", row_limit=60)]
        atomic_write_text(self.out / "ops.txt", "\n".join(tables))
        log.info("profile of training steps %d to %d -> %s", self.start, self.stop - 1, self.out)


def require_tensorboard():
    """torch.utils.tensorboard's SummaryWriter; ConfigError naming --tensorboard when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or pip install -e '.[tensorboard]')") from None
    return SummaryWriter


class TensorBoardLog:
    """The epoch's scalars (loss parts, accuracies, learning rate, images/s) as TensorBoard event files."""

    def __init__(self, out: Path, first_epoch: int):
        SummaryWriter = require_tensorboard()
        # A resumed run drops the events of epochs it trains again.
        self.writer = SummaryWriter(log_dir=str(out), purge_step=first_epoch + 1 if first_epoch else None)

    def write(self, entry: dict) -> None:
        epoch = entry["epoch"]
        for name, value in entry["train"].items():
            self.writer.add_scalar(f"train/{name}", value, epoch)
        for split in ("val", "test"):
            if entry.get(split):
                self.writer.add_scalar(f"{split}/accuracy", entry[split]["accuracy"], epoch)
                self.writer.add_scalar(f"{split}/balanced_accuracy", entry[split]["balanced_accuracy"], epoch)
        self.writer.add_scalar("lr", entry["lr"], epoch)
        if "throughput" in entry:
            self.writer.add_scalar("throughput/images_per_s", entry["throughput"]["images_per_s"], epoch)
            self.writer.add_scalar("throughput/data_wait_share", entry["throughput"]["data_wait_share"], epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


__all__ = ["EpochMeter", "StepProfiler", "TensorBoardLog", "parse_step_range", "require_tensorboard",
           "throughput_summary"]
