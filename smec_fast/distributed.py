"""Multi-process training under torchrun: process group, synchronised batch norm, shared per-sample state.

`torchrun --nproc_per_node=N -m smec_fast train ...` starts N processes with RANK, LOCAL_RANK and
WORLD_SIZE set; `setup_distributed` joins them into a process group (NCCL on GPUs, gloo on CPUs). The
configured batch size is the global batch: each process trains on its share, batch norm statistics are
computed over the whole global batch, and per-sample state (ELR targets, SCN labels) is exchanged after
every step, so N processes train the same model as one process with the same global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn

from smec_fast.errors import ConfigError, SmecFastError

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(device: torch.device, timeout_s: float) -> DistributedContext:
    """Join the torchrun process group if this process is one of several; a no-op otherwise.

    `timeout_s` bounds how long a collective waits for a missing process before failing, so a job whose
    process died or hung stops with an error instead of waiting forever.
    """
    if not launched_by_torchrun():
        return DistributedContext()
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank=rank, world_size=world, local_rank=local)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def process_device(device: torch.device, context: DistributedContext) -> torch.device:
    """The device of this process: its local GPU under torchrun, else `device`."""
    if context.enabled and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def shard_batch_size(batch_size: int, context: DistributedContext) -> int:
    """Each process's share of the global batch."""
    if batch_size % context.world_size:
        raise ConfigError(f"--batch-size {batch_size} (the global batch) must divide evenly over "
                          f"{context.world_size} processes")
    return batch_size // context.world_size


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place; unchanged in a single process."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def sync_rows_(buffer: torch.Tensor, index: torch.Tensor) -> None:
    """After each process updated `buffer[index]` for its own samples, give every process all the updates.

    Every process must call this with the same number of indices (equal per-process batches).
    """
    if not active():
        return
    world = dist.get_world_size()
    indices = [torch.empty_like(index) for _ in range(world)]
    dist.all_gather(indices, index.contiguous())
    rows = buffer[index].contiguous()
    gathered = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(gathered, rows)
    buffer[torch.cat(indices)] = torch.cat(gathered)


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch norm with statistics summed over all processes (forward) and the matching backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):
        dims = (0, 2, 3)
        stats = torch.cat([x.sum(dims, dtype=torch.float64), (x.double() * x.double()).sum(dims),
                           torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)])
        all_reduce_sum(stats)
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp(min=0)
        invstd = torch.rsqrt(var + eps)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_(momentum * (var * count / (count - 1).clamp(min=1)).to(running_var.dtype))
        shape = (1, c, 1, 1)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd.to(x.dtype).view(shape)
        ctx.affine = weight is not None
        if weight is None:  # batch norm without affine parameters
            weight, bias = x.new_ones(c), x.new_zeros(c)
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype), count)
        return xhat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx, grad):
        xhat, weight, invstd, count = ctx.saved_tensors
        dims = (0, 2, 3)
        shape = (1, -1, 1, 1)
        sum_g = grad.sum(dims)
        sum_gx = (grad * xhat).sum(dims)
        grad_weight, grad_bias = sum_gx.clone(), sum_g.clone()  # this process's share; DDP averages them
        totals = all_reduce_sum(torch.cat([sum_g, sum_gx]))
        c = xhat.shape[1]
        n = count.to(grad.dtype)
        grad_x = (weight * invstd).view(shape) * (grad - (totals[:c] / n).view(shape) - xhat * (totals[c:] / n).view(shape))
        if not ctx.affine:
            grad_weight = grad_bias = None
        return grad_x, grad_weight, grad_bias, None, None, None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all processes, on any device.

    torch.nn.SyncBatchNorm does the same with CUDA kernels only; this version runs with gloo on CPUs, so a
    CPU job of N processes matches one process with the same global batch. Outside a process group it is
    a plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        if self.momentum is None or self.num_batches_tracked is None:
            raise ValueError("GlobalBatchNorm2d needs a numeric momentum and tracked running statistics")
        self.num_batches_tracked.add_(1)
        return _GlobalBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps,
                                      self.momentum)


def convert_batchnorm(model: ModuleT, device: torch.device) -> ModuleT:
    """Batch norm over the global batch: torch's SyncBatchNorm on CUDA, GlobalBatchNorm2d elsewhere.

    State dict keys are unchanged, so checkpoints load into single-process models and back.
    """
    if device.type == "cuda":
        return cast(ModuleT, nn.SyncBatchNorm.convert_sync_batchnorm(model))
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            device_of = next(child.buffers(), None)
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)
            replacement.to(device_of.device if device_of is not None else "cpu")
            replacement.load_state_dict(child.state_dict())
            setattr(model, name, replacement)
        else:
            convert_batchnorm(child, device)
    return model


def broadcast_from_main(compute, context: DistributedContext):
    """`compute()` on process 0, its result (or its SmecFastError) given to every process."""
    if not context.enabled:
        return compute()
    payload: list = [None, None]
    if context.is_main:
        try:
            payload = [compute(), None]
        except SmecFastError as err:
            payload = [None, err]
    dist.broadcast_object_list(payload, src=0)
    if payload[1] is not None:
        raise payload[1]
    return payload[0]


def shard_of_batch() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
