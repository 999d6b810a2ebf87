"""One implementation of each measurement: delving-plan and the benchmark scripts time through these.

Each function measures one stage on the real thing (the configured reader, the paper's transform, the
TrainLoader, the Trainer's own step and loop, the run's all-reduce) and stops at a time limit, so a plan keeps
to its budget whatever the size of the model or the data set.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from delving.data.decode import read_delay
from delving.data.normalize import lighting_offset
from delving.data.transforms import TrainTransform, draw_train_params, sample_rng
from delving.engine.throughput import peak_memory_gib, reset_peak_memory, synchronize, time_per_step

if TYPE_CHECKING:
    from delving.data.config import DataConfig
    from delving.data.loaders import TrainLoader
    from delving.data.readers import SampleReader
    from delving.dist import DistributedContext
    from delving.engine.trainer import Trainer


# ---------------------------------------------------------------- processes' memory
@dataclass
class ProcessMemory:
    rss_mb: float  # resident, shared pages included
    uss_mb: float  # private to the process: what one more such process costs
    pss_mb: float  # shared pages divided among their users


def process_memory(pid: int | str = "self") -> ProcessMemory:
    """RSS, USS and PSS of one process, from /proc/<pid>/smaps_rollup (Linux)."""
    values = {"Rss:": 0, "Pss:": 0, "Private_Clean:": 0, "Private_Dirty:": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line else ""
        if key in values:
            values[key] = int(line.split()[1])
    uss = values["Private_Clean:"] + values["Private_Dirty:"]
    return ProcessMemory(values["Rss:"] / 1024, uss / 1024, values["Pss:"] / 1024)


def child_pids(pid: int | None = None) -> list[int]:
    """The live child processes of `pid` (this process by default): a loader's workers."""
    parent = os.getpid() if pid is None else pid
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(entry.name))
    return sorted(children)


# ---------------------------------------------------------------- storage
def evict_from_page_cache(path: str | os.PathLike) -> None:
    """Drops the file's pages from the page cache (no root needed), so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read_sample(reader: SampleReader, index: int) -> bytes:
    source = reader.source(index)
    if isinstance(source, str | os.PathLike):
        read_delay()
        with open(source, "rb") as handle:
            return handle.read()
    return source.read()  # a shard member: the reader read it from its tar already


@dataclass
class StorageRate:
    files: int
    megabytes: float
    seconds: float
    concurrency: int
    evicted: bool  # False for shard members (their tar files are shared with other samples)

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def storage_rate(
    reader: SampleReader, indices: Sequence[int], concurrency: int, max_seconds: float
) -> tuple[StorageRate, list[bytes]]:
    """Reads the samples `indices` (evicted from the page cache first) with `concurrency` readers at once, as
    the loader's workers do; stops at `max_seconds`. Returns the rate and the files' bytes."""
    evicted = True
    for index in indices:
        source = reader.source(index)
        if isinstance(source, str | os.PathLike):
            evict_from_page_cache(source)
        else:
            evicted = False
    blobs: list[bytes] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max(concurrency, 1)) as pool:
        for first in range(0, len(indices), max(concurrency, 1) * 4):
            chunk = indices[first : first + max(concurrency, 1) * 4]
            blobs += list(pool.map(lambda i: _read_sample(reader, i), chunk))
            if time.perf_counter() - start > max_seconds:
                break
    seconds = max(time.perf_counter() - start, 1e-9)
    rate = StorageRate(len(blobs), sum(map(len, blobs)) / 1e6, seconds, max(concurrency, 1), evicted)
    return rate, blobs


# ---------------------------------------------------------------- input
def train_crop_job(cfg: DataConfig) -> Callable[[Any, int], Any]:
    """One sample's work in a loader worker on the Pillow path: the paper's train crop (uint8) and its lighting
    shift, with sample i's own draws."""
    transform = TrainTransform(cfg)

    def job(source: Any, i: int) -> Any:
        draws = draw_train_params(sample_rng(0, 0, i), cfg)
        return transform.crop(source, draws), lighting_offset(draws.alpha)

    return job


def transform_rate_per_core(cfg: DataConfig, blobs: Sequence[bytes], max_seconds: float) -> float:
    """Images/s of decode + the paper's train transform on one core, on files already in memory (so the disk
    is not in it): what one loader worker gives."""
    job = train_crop_job(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker
    try:
        start, done = time.perf_counter(), 0
        while done < 3 or time.perf_counter() - start < max_seconds:
            job(io.BytesIO(blobs[done % len(blobs)]), done)
            done += 1
            if done >= 4 * len(blobs) and time.perf_counter() - start >= max_seconds / 4:
                break
        return done / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


@dataclass
class LoaderRate:
    images_per_s: float
    first_batch_s: float  # the workers' start and the first batch: paid once per launch
    batches: int


def loader_rate(
    loader: TrainLoader, max_batches: int, max_seconds: float, epoch: int = 0, start_step: int = 0
) -> tuple[LoaderRate, tuple[torch.Tensor, torch.Tensor]]:
    """Images/s of the TrainLoader as the Trainer iterates it (batches on its device), after the first batch;
    also returns the first batch (for the model's step)."""
    device = loader.device
    start = time.perf_counter()
    batches = iter(loader.epoch(epoch, start_step))
    first = next(batches)
    synchronize(device)
    first_s = time.perf_counter() - start
    start, seen, count = time.perf_counter(), 0, 0
    for _, labels in batches:
        seen += len(labels)
        count += 1
        if count >= max_batches or time.perf_counter() - start > max_seconds:
            break
    synchronize(device)
    seconds = time.perf_counter() - start
    rate = seen / seconds if seen else len(first[1]) / first_s
    del batches
    return LoaderRate(rate, first_s, count), first


def worker_memory(loader_owner_pid: int | None = None) -> list[ProcessMemory]:
    """The memory of each loader worker of this process (after they have read batches)."""
    found = []
    for pid in child_pids(loader_owner_pid):
        with contextlib.suppress(OSError):
            found.append(process_memory(pid))
    return found


# ---------------------------------------------------------------- model
@dataclass
class StepRate:
    seconds: float  # per step of `batch` images on this rank
    steps: int
    warmup_s: float
    peak_gib: float | None  # device memory (None on the CPU)
    batch: int


def model_step_rate(
    trainer: Trainer,
    images: torch.Tensor,
    labels: torch.Tensor,
    max_seconds: float,
    warmup: int = 2,
    min_steps: int = 3,
    sync_gradients: bool = True,
) -> StepRate:
    """The Trainer's own training step (precision, channels_last, compile, accumulation, optimizer) on one
    batch already on the device, repeated; with sync_gradients=False under DDP, without the all-reduce."""

    def step() -> None:
        no_sync = not sync_gradients and hasattr(trainer.net, "no_sync")
        with trainer.net.no_sync() if no_sync else contextlib.nullcontext():
            trainer.train_step(images, labels, want_grad_norms=False)

    # The steps train on one batch over and over: the weights and the optimizer's state are put back after, so
    # the stages after this one (the Trainer's loop) time a model as the run has it, not one driven to NaN.
    weights = {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}
    optimizer_state = copy.deepcopy(trainer.optimizer.state_dict())
    try:
        reset_peak_memory(trainer.device)
        seconds, steps, warmup_s = time_per_step(step, trainer.device, warmup, min_steps, max_seconds)
    finally:
        trainer.net.load_state_dict(weights)
        trainer.optimizer.load_state_dict(optimizer_state)
    return StepRate(seconds, steps, warmup_s, peak_memory_gib(trainer.device), len(labels))


def is_out_of_memory(error: BaseException) -> bool:
    """The device's memory ran out: CUDA's OutOfMemoryError, or the CPU allocator's failure (a RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error)


def repeat_batch(images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of `size` from a real one (repeated or cut), on its device."""
    if size <= len(labels):  # a view: no copy of a batch that may be large
        return images[:size], labels[:size]
    reps = -(-size // len(labels))
    return images.repeat(reps, 1, 1, 1)[:size], labels.repeat(reps)[:size]


def largest_fitting_batch(
    trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, micro_batch: int, max_seconds: float
) -> StepRate | None:
    """The step timed at the largest micro-batch (a power of two below `micro_batch`) whose timed steps all fit
    the device's memory, one micro-batch a step (accumulation runs them one after another at the same rate);
    None if not even one image fits. The size is judged by the very steps that are timed: a size whose first
    steps barely fit can fail a later one."""
    accum = trainer.cfg.train.grad_accum_steps
    trainer.cfg.train.grad_accum_steps = 1
    try:
        size = micro_batch // 2
        while size >= 1:
            try:
                x, y = repeat_batch(images, labels, size)
                return model_step_rate(trainer, x, y, max_seconds, warmup=1, min_steps=2)
            except RuntimeError as error:  # torch.OutOfMemoryError is one
                if not is_out_of_memory(error):
                    raise
                trainer.optimizer.zero_grad(set_to_none=True)
                if trainer.device.type == "cuda":
                    torch.cuda.empty_cache()
                size //= 2
        return None
    finally:
        trainer.cfg.train.grad_accum_steps = accum


def trainer_loop_rate(trainer: Trainer, steps: int) -> float:
    """Images/s of the Trainer's own loop (train_epoch: loader, step, agreement, logging) over the last
    `steps` steps of epoch 0: the loader and the step together, as the run has them."""
    trainer.state.epoch = 0
    trainer.state.step_in_epoch = trainer.train_loader.steps_per_epoch - steps
    start = time.perf_counter()
    trainer.train_epoch()
    synchronize(trainer.device)
    return steps * trainer.cfg.train.batch_size / (time.perf_counter() - start)


# ---------------------------------------------------------------- DDP
def all_reduce_seconds(model: nn.Module, ctx: DistributedContext, repeats: int = 5) -> float:
    """Seconds of one all-reduce of a buffer the size of the model's gradients (fp32, as DDP sends them),
    the median of `repeats`, on the run's backend and device."""
    import torch.distributed as dist

    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffer = torch.zeros(numel, dtype=torch.float32, device=ctx.device)
    dist.all_reduce(buffer)  # warm-up: the communicator's set-up
    synchronize(ctx.device)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        synchronize(ctx.device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# ---------------------------------------------------------------- validation
def validation_rate(trainer: Trainer, max_seconds: float) -> tuple[float, int]:
    """Images/s of the validation pass on this rank (the val loader and the forward under the run's
    precision), after its first batch; and the batches timed."""
    trainer.model.eval()
    seen = count = 0
    start = first_done = time.perf_counter()
    try:
        with torch.no_grad():
            for images, labels in trainer.val_loader:
                with trainer._autocast():
                    trainer.model(images.to(trainer.device, non_blocking=True)).float().cpu()
                count += 1
                if count == 1:
                    first_done = time.perf_counter()
                    continue
                seen += len(labels)
                if time.perf_counter() - first_done > max_seconds:
                    break
    finally:
        trainer.model.train()
    if not seen:  # one batch only: count it with its start-up
        return count and len(labels) / (first_done - start), count
    return seen / (time.perf_counter() - first_done), count
