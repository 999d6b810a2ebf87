"""Training and validation loaders with a sample order and augmentation that depend only on (seed, epoch).

The global order of an epoch is a permutation from (seed, epoch); global step t takes positions
[t*B*W, (t+1)*B*W) of it and rank r the r-th slice of B. So W ranks with batch B see exactly what one process
with batch B*W sees, every rank has the same number of full batches (the tail is dropped), and resuming at step
t replays the same batches. Each sample's augmentation comes from a generator seeded by (seed, epoch, index),
so results do not depend on the number of workers either. The sampler hands (epoch, index) pairs to the
workers, because persistent workers keep their own copy of the dataset.

An unreadable file is replaced by the next readable one in the listing (the batch keeps its size), and the
skips travel back with the batch so the main process counts and logs them exactly once, whatever the workers.

Workers send uint8 crops (and each sample's lighting shift); the lighting, the mean and the std run once per
batch on the training device (data/normalize.py). The readers' index is in arrays and `gc.freeze()` runs before
the workers fork, so the workers share the index's pages. Loaders end their workers on `close()`, and at the
latest when the interpreter exits (the workers ignore SLURM's SIGTERM, which Python's exit would send them).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import random
import select
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from delving.data.config import DataConfig, DataConfigError, as_data_config
from delving.data.decode import BadImageError, ImageSource, TooManyBadImagesError
from delving.data.device_decode import DeviceTrainTransform, EncodedImage, read_for_device
from delving.data.normalize import InputNormalizer, lighting_offset
from delving.data.readers import SampleReader, describe_copy, open_split
from delving.data.transforms import EvalTransform, TrainDraws, TrainTransform, sample_rng
from delving.worker_pool import ctrl_c_held, ignore_ctrl_c

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD = 50  # a run of this many unreadable files in the listing means the data set is broken

Failure = tuple[str, str]  # (file, reason)


class BadFileCounter:
    """Counts skipped files in the main process; logs each file once; stops the run past the allowed fraction.

    The fraction is of the samples read so far, but never of fewer than one epoch's worth (`min_reads`), so
    a bad file among the first few reads does not stop a healthy run.
    """

    def __init__(self, max_fraction: float, min_reads: int) -> None:
        self.max_fraction = max_fraction
        self.min_reads = min_reads
        self.reads = 0
        self.skipped = 0
        self.logged: set[str] = set()

    def reset(self) -> None:
        """Zero the counts (files already logged stay quiet)."""
        self.reads = 0
        self.skipped = 0

    def update(self, good: int, failures: list[Failure]) -> None:
        self.reads += good + len(failures)
        self.skipped += len(failures)
        for name, reason in failures:
            if name not in self.logged:
                self.logged.add(name)
                log.warning("skipping unreadable image %s (%s)", name, reason)
        if self.skipped > self.max_fraction * max(self.reads, self.min_reads):
            raise TooManyBadImagesError(
                f"{self.skipped} unreadable images skipped out of {self.reads} read, more than "
                f"data.max_bad_fraction={self.max_fraction}; check the data set with delving-verify-data "
                f"(last: {': '.join(failures[-1]) if failures else '?'})"
            )


def seed_worker_globals(seed: int, rank: int, epoch: int, worker: int) -> None:
    """Seeds python/numpy/torch in a worker for anything outside our per-sample generators."""
    ss = np.random.SeedSequence((seed, rank, epoch, worker))
    state = ss.generate_state(2, dtype=np.uint32)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1))


class _EncodeForDevice:
    """The workers' share of data.decode_on_device: read the file, keep the draws for the device."""

    def __init__(self, exif_transpose: bool) -> None:
        self.exif_transpose = exif_transpose

    def __call__(self, source: ImageSource, draws: TrainDraws) -> tuple[EncodedImage, TrainDraws]:
        return read_for_device(source, self.exif_transpose), draws


class _CropForDevice:
    """The workers' share of the Pillow path: the uint8 crop and its lighting shift (added on the device)."""

    def __init__(self, transform: TrainTransform) -> None:
        self.transform = transform

    def __call__(self, source: ImageSource, draws: TrainDraws) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform.crop(source, draws), lighting_offset(draws.alpha)


class _TrainSet(Dataset):
    """Map-style set keyed by (epoch, index); replaces an unreadable sample by the next readable one."""

    def __init__(
        self, reader: SampleReader, cfg: DataConfig, seed: int, rank: int, normalizer: InputNormalizer
    ) -> None:
        self.reader = reader
        pillow = TrainTransform(cfg, normalizer)
        self.draw = pillow.draws
        self.transform = (
            _EncodeForDevice(cfg.exif_transpose) if cfg.decode_on_device else _CropForDevice(pillow)
        )
        self.seed = seed
        self.rank = rank
        self.seeded_epoch: int | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int, list[Failure]]:
        epoch, index = key
        info = get_worker_info()
        if info is not None and epoch != self.seeded_epoch:  # persistent workers live across epochs
            seed_worker_globals(self.seed, self.rank, epoch, info.id)
            self.seeded_epoch = epoch
        draws = self.draw(sample_rng(self.seed, epoch, index))
        failures: list[Failure] = []
        for step in range(min(MAX_CONSECUTIVE_BAD, len(self.reader))):
            candidate = (index + step) % len(self.reader)
            try:
                return (
                    self.transform(self.reader.source(candidate), draws),
                    self.reader.label(candidate),
                    failures,
                )
            except BadImageError as err:
                failures.append((err.path, err.reason))
        raise TooManyBadImagesError(
            f"{len(failures)} unreadable images in a row from sample {index}: {failures}"
        )


class _EpochBatches:
    """Batch sampler of (epoch, index) lists for one rank; `set_epoch` picks the epoch and the first step."""

    def __init__(self, reader: SampleReader, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.reader = reader
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.steps_per_epoch = len(reader) // (batch_size * world_size)
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # A generator: the epoch's order is drawn at the first batch asked for, so the iterator a DataLoader
        # makes and drops while it starts (it calls iter() twice on the first epoch) costs nothing.
        epoch, start_step = self.epoch, self.start_step
        order = self.reader.epoch_order(self.seed, epoch)
        global_batch = self.batch_size * self.world_size
        for step in range(start_step, self.steps_per_epoch):
            first = step * global_batch + self.rank * self.batch_size
            yield [(epoch, int(i)) for i in order[first : first + self.batch_size]]


def init_worker_process(_: int = 0, owner_pid: int | None = None) -> None:
    """Every loader worker (training, validation, evaluation): one thread, and the stop signals left to its
    rank. SLURM signals every process of a job step, a terminal's Ctrl-C the whole process group; the rank
    stops at the next step and ends its workers, so this holds under any start method, not only fork (whose
    workers happen to inherit the rank's handlers). `owner_pid`: the process that owns the loader; the worker
    ends when it does (`_end_with`)."""
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    ignore_ctrl_c()  # started under ctrl_c_held: SIGINT is blocked here until it is ignored
    torch.set_num_threads(1)
    if owner_pid is not None and owner_pid != os.getpid():
        _end_with(owner_pid)


def _end_with(owner_pid: int) -> None:
    """Exits this worker as soon as `owner_pid` has ended, however it ended (SIGKILL, SIGTERM without a handler).

    PyTorch's own watchdog watches the worker's parent, which under forkserver (Python 3.14's default on Linux)
    is the fork server, not the loader's process; and the fork server lives as long as its children do (they
    hold its "alive" pipe): with the workers ignoring SIGTERM, both outlived the script for good. A pidfd
    becomes readable when the process ends; where there is none (Linux < 5.3), the pid is polled each second.
    """

    def watch() -> None:
        try:
            pidfd = os.pidfd_open(owner_pid)
        except (AttributeError, OSError):  # no pidfd here, or the owner is gone already
            pidfd = None
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while _alive(owner_pid):
                time.sleep(1.0)
        os._exit(0)  # the owner is gone: nobody reads this worker's batches, and nothing here must be kept

    threading.Thread(target=watch, name="delving-owner-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


class _WorkerInit:
    """worker_init_fn: one intra-op thread per worker (the workers already run in parallel), seeded globals."""

    def __init__(self, seed: int, rank: int, batches: _EpochBatches | None) -> None:
        self.seed, self.rank, self.batches = seed, rank, batches
        self.owner_pid = os.getpid()  # the process that builds the loader owns its workers

    def __call__(self, worker: int) -> None:
        init_worker_process(worker, self.owner_pid)
        seed_worker_globals(self.seed, self.rank, self.batches.epoch if self.batches else 0, worker)


def _collate_train(items: list[tuple[Any, int, list[Failure]]]):
    """(uint8 NCHW crops, (N, 3) lighting shifts) or, with data.decode_on_device, the (EncodedImage,
    TrainDraws) pairs as they are; then the labels and the skipped files."""
    if isinstance(items[0][0][0], EncodedImage):
        images: Any = [sample for sample, _, _ in items]
    else:
        images = (
            torch.stack([crop for (crop, _), _, _ in items]),
            torch.stack([shift for (_, shift), _, _ in items]),
        )
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.int64)
    return images, labels, [f for _, _, failures in items for f in failures]


def usable_workers(asked: int) -> int:
    """data.num_workers, capped at the cores this process may run on: more workers only compete for them (and
    torch warns at every loader they start). Said once per process. The batches do not depend on it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if asked <= cores:
        return asked
    if asked not in _CAPS_SAID:
        _CAPS_SAID.add(asked)
        log.warning(
            "data.num_workers=%d, but this process may use %d CPU core%s: %d loader worker%s (set "
            "data.num_workers=%d to say so yourself)",
            asked, cores, "s" if cores > 1 else "", cores, "s" if cores > 1 else "", cores,
        )  # fmt: skip
    return cores


_CAPS_SAID: set[int] = set()


def _loader_kwargs(cfg: DataConfig, pin_memory: bool, init: _WorkerInit) -> dict:
    # A private generator: each new iterator draws a base seed from it, never from the global torch RNG,
    # which the trainer's dropout uses and restores on resume.
    generator = torch.Generator().manual_seed(0)
    workers = usable_workers(cfg.num_workers)
    if workers == 0:
        return {"num_workers": 0, "pin_memory": pin_memory, "generator": generator}
    return {
        "generator": generator,
        "num_workers": workers,
        "persistent_workers": True,
        "prefetch_factor": cfg.prefetch_factor,
        "worker_init_fn": init,
        "pin_memory": pin_memory,
    }


_OPEN_LOADERS: weakref.WeakSet[_WorkerOwner] = weakref.WeakSet()
_exit_hook_registered = False


class _WorkerOwner:
    """Owns a DataLoader whose persistent workers must end on close() or at the interpreter's exit.

    The workers ignore SIGTERM (SLURM's stop goes to the rank); Python's exit handler would send them exactly
    that and wait forever. So the first iteration registers an exit hook (after multiprocessing's own, so it
    runs before it) that tells open loaders' workers to finish, as a clean shutdown does.
    """

    _loader: DataLoader | None

    def _iterate(self) -> Iterator[Any]:
        global _exit_hook_registered
        if self._loader is None:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if not _exit_hook_registered:
            atexit.register(_close_open_loaders)
            _exit_hook_registered = True
        _OPEN_LOADERS.add(self)
        if self._loader.num_workers and getattr(self._loader, "_iterator", None) is None:
            gc.collect()
            gc.freeze()  # the objects the workers inherit: the collector must not touch (copy) their pages
        with ctrl_c_held():  # the workers fork here
            return iter(self._loader)

    def close(self) -> None:
        """Ends the workers now (they finish the batch in hand); the loader cannot be iterated after."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        _OPEN_LOADERS.discard(self)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_open_loaders() -> None:
    for owner in list(_OPEN_LOADERS):
        owner.close()


class TrainLoader(_WorkerOwner):
    """The paper's training input for one rank: `epoch(e, start_step)` yields (float32 NCHW on `device`, int64).

    The workers send uint8 crops; the lighting, the mean and the std are added per batch on `device`. With
    data.decode_on_device the images come decoded and transformed on `device` (data/device_decode.py).
    """

    def __init__(
        self,
        cfg: DataConfig,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pin_memory: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0 <= rank < world_size or batch_size < 1:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}"
            )
        cfg = as_data_config(cfg)  # the data room's entry: typed once here, a DataConfig below
        reader, self.classes = open_split(cfg, cfg.train_split)
        self.reader = reader  # its listing: ranks compare it (data/same_data.py)
        self.num_classes = len(self.classes)
        self.num_samples = len(reader)
        self.data_copy = describe_copy(cfg, cfg.train_split, reader)  # what the checkpoint records
        self.batches = _EpochBatches(reader, batch_size, rank, world_size, seed)
        self.steps_per_epoch = self.batches.steps_per_epoch
        if self.steps_per_epoch == 0:  # preflight counted the files; the listing may have found fewer
            raise DataConfigError(
                f"{len(reader)} training samples are fewer than one global batch of {batch_size * world_size}: "
                "lower train.batch_size"
            )
        self.bad_files = BadFileCounter(cfg.max_bad_fraction, self.steps_per_epoch * batch_size)
        self.device = torch.device(device)
        normalizer = InputNormalizer.from_config(cfg)
        self.normalizer = normalizer.to(self.device)
        self.on_device = (
            DeviceTrainTransform(cfg, self.device, self.normalizer) if cfg.decode_on_device else None
        )
        self._loader = DataLoader(
            _TrainSet(reader, cfg, seed, rank, normalizer),
            batch_sampler=self.batches,
            collate_fn=_collate_train,
            **_loader_kwargs(cfg, pin_memory, _WorkerInit(seed, rank, self.batches)),
        )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from step `start_step` on (the same ones a full epoch would give there)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step={start_step} outside [0, {self.steps_per_epoch}]")
        self.batches.set_epoch(epoch, start_step)
        for images, labels, failures in self._iterate():
            failed: list[Failure] = []
            if self.on_device is not None:
                encoded, draws = zip(*images, strict=True)
                images, labels, failed = self.on_device(list(encoded), list(draws), labels)
            else:
                crops, shifts = images
                images = self.normalizer(crops.to(self.device, non_blocking=True), shifts)
            # A file the device could not decode was read and skipped; its place holds a repeat.
            self.bad_files.update(len(labels) - len(failed), [*failures, *failed])
            yield images, labels


class _EvalSet(Dataset):
    def __init__(self, reader: SampleReader, cfg: DataConfig, normalizer: InputNormalizer) -> None:
        self.reader = reader
        self.transform = EvalTransform(cfg, normalizer)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, Failure | None]:
        try:
            return self.transform.crop(self.reader.source(index)), self.reader.label(index), None
        except BadImageError as err:
            return None, -1, (err.path, err.reason)


def _collate_eval(items: list[tuple[torch.Tensor | None, int, Failure | None]]):
    good = [(image, label) for image, label, _ in items if image is not None]
    images = torch.stack([image for image, _ in good]) if good else torch.empty(0, dtype=torch.uint8)
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return images, labels, [f for _, _, f in items if f is not None]


class EvalLoader(_WorkerOwner):
    """Center-crop validation for one rank: rank r takes images r::world_size, each image exactly once overall.
    Yields (float32 NCHW on `device`, int64): the workers send uint8 crops, the mean runs per batch on `device`.

    `max_samples` evaluates a fixed random subset of that size instead of the whole split.

    No padding: ranks may get one image more or less, so the caller sums (not averages) per-rank counts and
    compares the total plus `skipped` with `num_samples`. An unreadable image is dropped (logged and counted
    in `skipped`), since replacing it would count another image twice.
    """

    def __init__(
        self,
        cfg: DataConfig,
        split: str,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        max_samples: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        cfg = as_data_config(cfg)  # the data room's entry: typed once here, a DataConfig below
        reader, self.classes = open_split(cfg, split)
        self.reader = reader
        self.num_classes = len(self.classes)
        subset = np.arange(len(reader))
        if max_samples is not None and max_samples < len(reader):
            # A fixed random subset (Figs. 2-3 use 3,000 random val images): the same in every run and rank.
            subset = np.sort(np.random.default_rng(0).choice(len(reader), size=max_samples, replace=False))
        self.num_samples = len(subset)
        self.indices = subset[rank::world_size].tolist()
        self.bad_files = BadFileCounter(cfg.max_bad_fraction, len(self.indices))
        self.device = torch.device(device)
        normalizer = InputNormalizer.from_config(cfg)
        self.normalizer = normalizer.to(self.device)
        batches = [self.indices[i : i + batch_size] for i in range(0, len(self.indices), batch_size)]
        self._loader = DataLoader(
            _EvalSet(reader, cfg, normalizer),
            batch_sampler=batches,
            collate_fn=_collate_eval,
            **_loader_kwargs(cfg, pin_memory, _WorkerInit(0, rank, None)),
        )

    @property
    def skipped(self) -> int:
        """Unreadable images dropped by this rank in the current (or last) pass."""
        return self.bad_files.skipped

    def __len__(self) -> int:
        if self._loader is None:
            raise RuntimeError("EvalLoader is closed")
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.bad_files.reset()  # per pass: the caller checks each pass's images + skipped == num_samples
        for images, labels, failures in self._iterate():
            self.bad_files.update(len(labels), failures)
            if len(labels):
                yield self.normalizer(images.to(self.device, non_blocking=True)), labels
