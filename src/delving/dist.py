"""Process-group set-up from torchrun's or SLURM's variables, and the few collectives the trainer needs."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from delving.errors import ConfigError, UserError
from delving.run_identity import environment_ranks


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # A gloo group beside the default one: small control messages (stop, failure, log) travel on the CPU,
    # so agreeing every step costs no GPU sync even under nccl.
    control: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def check_device(key: str, requested: str) -> None:
    """Refuses, before any work, a device this machine cannot give: a name torch does not know, a type
    delving does not run on, or cuda where no GPU is visible (torch would fail at the first CUDA call)."""
    if requested == "auto":
        return
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(
            f"{key}={requested}: not a device name; give {key}=auto, cpu, cuda or cuda:<index>"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}={requested}: delving runs on cpu or cuda; give {key}=auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{key}={requested}: no CUDA GPU is usable on {socket.gethostname()} (no driver or device, or "
            f"CUDA_VISIBLE_DEVICES hides them); give {key}=cpu (or auto), or run where a GPU is"
        )


def pick_device(requested: str, local_rank: int) -> torch.device:
    """cuda:<local rank>, or the only visible GPU when the launcher gives each task one (--gpus-per-task=1).

    A local rank at or past the visible GPUs (torchrun --nproc_per_node=8 on 4 GPUs) is refused: falling back
    to cuda:0 would put two ranks on one GPU, which NCCL reports only later ("Duplicate GPU detected").
    """
    if requested == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        requested = "cuda"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        visible = torch.cuda.device_count()
        if visible == 1:
            return torch.device("cuda:0")
        if local_rank >= visible:
            raise UserError(
                f"local rank {local_rank} needs a GPU of its own, but this process sees {visible} GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); start at most "
                f"{visible} processes per node (torchrun --nproc_per_node={visible}, SLURM --ntasks-per-node)"
            )
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(requested_device: str = "auto", timeout_s: int = 1800) -> DistributedContext:
    """Joins the process group (nccl on GPU, gloo on CPU) when launched with several processes."""
    rank, world_size, local_rank = environment_ranks()
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return DistributedContext(rank, world_size, local_rank, device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout
        )
    control = dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() != "gloo" else None
    return DistributedContext(rank, world_size, local_rank, device, control)


def agree(ctx: DistributedContext, flags: list[int]) -> list[int]:
    """Every rank's flags combined by max (any rank's 1 wins); a collective every rank calls at the same point."""
    if not ctx.is_distributed:
        return flags
    values = torch.tensor(flags, dtype=torch.int64)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=ctx.control)
    return values.tolist()


class RankFailed(RuntimeError):
    """Another rank raised; the message is the first failing rank's."""


def fail_together(ctx: DistributedContext, error: BaseException | None) -> None:
    """A collective every rank reaches: if any rank has an error, every rank raises (the failing ranks their
    own error, the others RankFailed with the first failing rank's message) instead of leaving the others
    blocked in the next collective until the timeout."""
    if not ctx.is_distributed:
        if error is not None:
            raise error
        return
    if not agree(ctx, [int(error is not None)])[0]:
        return
    messages = gather_objects(ctx, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    raise RankFailed(f"rank {rank} failed, so every rank stopped: {message}")


@contextlib.contextmanager
def failing_together(ctx: DistributedContext) -> Iterator[None]:
    """Wrap rank-local work that may raise before the next collective: then every rank raises together."""
    error = None
    try:
        yield
    except Exception as exc:
        error = exc
    fail_together(ctx, error)


def gather_objects(ctx: DistributedContext, obj: Any) -> list[Any]:
    """Every rank's `obj` on every rank, over the control group (for error messages and small records)."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj, group=ctx.control)
    return gathered


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """In-place sum or max over ranks of a small CPU tensor (moved to the GPU for nccl and back)."""
    if not dist.is_initialized():
        return tensor
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    )
    moved = tensor.to(device)
    dist.all_reduce(moved, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    tensor.copy_(moved.cpu())
    return tensor


def gather_to_main(obj: Any, ctx: DistributedContext) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (None elsewhere); all ranks must call it."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


# ---------------------------------------------------------------- results of several ranks (evaluation)
# These run over `ctx.control` (the gloo group beside nccl; the default group under gloo), so their tensors
# stay on the CPU whatever the backend: no device juggling in the callers. `ctx` comes from init_distributed.


def gather_rows_to_main(
    ctx: DistributedContext, indices: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every rank's (indices, rows) concatenated on rank 0 in rank order (None elsewhere), exactly.

    Ranks may hold different numbers of rows: the counts travel first and the transport padding is cut off,
    so nothing is duplicated or dropped (torchvision's reference pads with repeated samples instead).
    """
    if not ctx.is_distributed:
        return indices, rows
    sizes = [int(n) for n in gather_objects(ctx, len(indices))]
    most = max(sizes)
    padded_indices = torch.full((most,), -1, dtype=torch.int64)
    padded_indices[: len(indices)] = indices
    padded_rows = torch.zeros((most, *rows.shape[1:]), dtype=rows.dtype)
    padded_rows[: len(rows)] = rows
    main = ctx.is_main
    index_list = [torch.empty_like(padded_indices) for _ in sizes] if main else None
    row_list = [torch.empty_like(padded_rows) for _ in sizes] if main else None
    dist.gather(padded_indices, index_list, dst=0, group=ctx.control)
    dist.gather(padded_rows, row_list, dst=0, group=ctx.control)
    if index_list is None or row_list is None:
        return None
    return (
        torch.cat([t[:n] for t, n in zip(index_list, sizes, strict=True)]),
        torch.cat([t[:n] for t, n in zip(row_list, sizes, strict=True)]),
    )


def broadcast_from_main(ctx: DistributedContext, values: list[float]) -> list[float]:
    """Rank 0's numbers on every rank (the others pass placeholders of the same length)."""
    if not ctx.is_distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(tensor, src=0, group=ctx.control)
    return tensor.tolist()
