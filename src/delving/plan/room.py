"""Room: will the disk, the RAM and /dev/shm hold what the planned run puts there, from its first to its last
epoch? Each shortfall is a blocker, one line that says what to change."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Safety margins: a figure measured on a few batches is not the run's worst moment.
RAM_MARGIN = 1.2
SHM_MARGIN = 1.5


@dataclass
class Room:
    what: str  # "disk", "RAM", "/dev/shm"
    where: str
    needed_bytes: float
    free_bytes: float
    detail: str

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.free_bytes


def state_bytes(tensors: dict[str, object]) -> int:
    """Bytes of the tensors in a (nested) state dict."""
    total = 0
    for value in tensors.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            total += state_bytes(value)
        elif isinstance(value, list | tuple):
            total += state_bytes(dict(enumerate(value)))
    return total


def checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> int:
    """last.pt's size from the parameter and optimizer-state counts: the weights (and buffers), every
    optimizer state tensor (e.g. SGD's momentum, AdamW's two moments; created at the first step), the EMA."""
    total = state_bytes(model.state_dict()) + state_bytes(optimizer.state_dict()["state"])
    return total + (state_bytes(ema.state_dict()) if ema is not None else 0)


def existing_ancestor(path: Path) -> Path:
    """The folder itself, or the nearest parent that exists (the run folder may not exist yet)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def disk_room(run_dir: Path, checkpoint: int, keep_best: int, predictions: int, already: int = 0) -> Room:
    """The run's folder over the whole run: last.pt, the best-k (each a hard link to a last.pt that a later
    save replaces, so each keeps its own copy), the temp file of the next atomic save, the predictions file.
    Files the run already holds there count as free (they are replaced)."""
    place = existing_ancestor(run_dir)
    free = shutil.disk_usage(place).free + already
    copies = keep_best + 2  # best-k + the live last.pt + the temp file of its next save
    needed = copies * checkpoint + predictions
    detail = (
        f"{copies} checkpoints of {checkpoint / 1e6:.1f} MB (last.pt, its next save's temp file, "
        f"train.keep_best={keep_best}) + predictions {predictions / 1e6:.1f} MB"
    )
    return Room("disk", str(place), needed, free, detail)


def available_ram(root: Path = Path("/")) -> tuple[float, str]:
    """Bytes a job may still take: MemAvailable, or less where a memory cgroup (a SLURM job's --mem, a
    container's limit) sets a lower one. A cgroup's usage counts the page cache, which the kernel gives back
    under its limit: the inactive file pages are taken off, as container tools do (the working set).
    `root` is the file system the /proc and /sys files are read from (tests lay them out elsewhere)."""
    available = 0.0
    for line in (root / "proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024.0
    source = "MemAvailable"
    for folder, limit in _cgroup_limits(root):
        usage = _working_set(folder)
        if usage is not None and limit - usage < available:
            where = Path("/") / folder.relative_to(root)  # as /sys shows it
            available, source = float(max(0, limit - usage)), f"the memory cgroup limit of {where}"
    return available, source


def _cgroup_limits(root: Path) -> list[tuple[Path, int]]:
    """(cgroup folder, its effective limit in bytes) of this process's memory cgroups, v2 and v1, from
    /proc/self/cgroup; only those with a limit. A limit set on a parent (SLURM sets it on the job, the step is
    a child) holds too: v1 says so in memory.stat, v2 by walking up."""
    found = []
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the lowest memory.max on the way up to the root
            base = root / "sys/fs/cgroup"
            folder, limits = base / path.strip("/"), []
            for level in [folder, *folder.parents]:
                limits.append(_read_int(level / "memory.max"))
                if level == base:
                    break
            known = [limit for limit in limits if limit is not None]
            if known:
                found.append((folder, min(known)))
        elif "memory" in controllers.split(","):
            folder = root / "sys/fs/cgroup/memory" / path.strip("/")
            stat = _memory_stat(folder)
            limit = stat.get("hierarchical_memory_limit", _read_int(folder / "memory.limit_in_bytes"))
            if limit is not None and limit < 2**62:  # v1 writes "no limit" as a page-rounded 2**63
                found.append((folder, limit))
    return found


def _working_set(folder: Path) -> int | None:
    """The cgroup's usage less its inactive file pages (v2 memory.current, v1 memory.usage_in_bytes)."""
    usage = _read_int(folder / "memory.current")
    if usage is None:
        usage = _read_int(folder / "memory.usage_in_bytes")
    if usage is None:
        return None
    stat = _memory_stat(folder)
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return max(0, usage - inactive)


def _memory_stat(folder: Path) -> dict[str, int]:
    try:
        lines = (folder / "memory.stat").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value) for key, value in (line.split() for line in lines if line.count(" ") == 1)}


def _read_int(path: Path) -> int | None:
    """The number in a cgroup file; None where it is missing, unreadable or says "max"."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def ram_room(
    local_ranks: int, rank_rss_mb: float, workers: int, worker_uss_mb: float, held_now_mb: float
) -> Room:
    """RAM for the node's ranks, each with its own process and `workers` loader workers (their private
    memory: the index and the libraries they share with the rank are counted once, in the rank), against
    what is available plus `held_now_mb`: what the plan's own processes on this node hold now (the run
    takes their place)."""
    free, source = available_ram()
    free += held_now_mb * 2**20
    per_rank = (rank_rss_mb + workers * worker_uss_mb) * 2**20
    needed = local_ranks * per_rank * RAM_MARGIN
    detail = (
        f"{local_ranks} rank(s) x ({rank_rss_mb:.0f} MB + {workers} worker(s) x {worker_uss_mb:.0f} MB) "
        f"x {RAM_MARGIN} margin, against {source} + the {held_now_mb:.0f} MB the plan's processes hold"
    )
    return Room("RAM", "this node", needed, free, detail)


def shm_room(local_ranks: int, workers: int, prefetch: int, batch_bytes: int) -> Room:
    """/dev/shm for the batches the workers hand over (shared memory): each worker keeps `prefetch` ready."""
    try:
        usage = shutil.disk_usage("/dev/shm")
        free = float(usage.free)
    except OSError:
        free = 0.0
    needed = local_ranks * workers * prefetch * batch_bytes * SHM_MARGIN
    detail = (
        f"{local_ranks} rank(s) x {workers} worker(s) x data.prefetch_factor={prefetch} batches of "
        f"{batch_bytes / 1e6:.1f} MB x {SHM_MARGIN} margin"
    )
    return Room("/dev/shm", "/dev/shm", needed, free, detail)


def local_ranks(world_size: int) -> int:
    """The ranks on this node: torchrun's LOCAL_WORLD_SIZE, SLURM's tasks per node, else the world."""
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return world_size
