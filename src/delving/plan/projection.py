"""From the measured stages to the run: epoch and run time, the bottleneck with its headroom, what to change,
and the blockers; written as plan.md (for people) and plan.json (for scripts)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from delving.io import atomic_write_text
from delving.plan.room import Room
from delving.progress import format_duration

# The loader's rate counts as the storage's when the disk alone is at most this much faster: the workers wait
# on reads, and more decoding cores would not help.
STORAGE_SHARE = 1.25
# The Trainer's loop below this fraction of the slowest stage: the stages slow each other (shared CPU cores).
CONTENTION = 0.8
# The all-reduce "hides" when the step with gradient sync is at most this much slower than without.
HIDDEN = 1.1


@dataclass
class Stages:
    """Global images/s of each stage (every rank together), and what the advice needs."""

    storage: float
    input: float
    model: float
    loop: float  # the Trainer's own loop: loader and step together
    per_core: float  # decode + transform, one core
    workers: int
    cores_per_rank: int
    local_ranks: int
    world_size: int
    device: str
    storage_files_per_s: float = 0.0
    storage_mb_per_s: float = 0.0
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    bf16_supported: bool = False
    decode_on_device: bool = False
    step_sync_s: float | None = None  # DDP: one step with and without the gradient all-reduce
    step_nosync_s: float | None = None
    all_reduce_s: float | None = None
    grad_accum_steps: int = 1


@dataclass
class Projection:
    rate: float  # global images/s the run will train at
    bottleneck: str
    headroom: float  # the next slowest stage over the bottleneck
    train_s: float  # one epoch's training steps
    val_s: float  # one epoch's share of validation
    save_s: float  # one epoch's checkpoint saves
    epoch_s: float
    run_s: float  # every epoch and the launch's start-up (the final evaluation not included)
    advice: list[str] = field(default_factory=list)


def bottleneck_of(stages: Stages) -> tuple[str, float]:
    """The slowest of storage, input and model, and how much faster the next one is."""
    rates = {"storage": stages.storage, "input": stages.input, "model": stages.model}
    ranked = sorted(rates.items(), key=lambda kv: kv[1])
    name = ranked[0][0]
    if name == "input" and stages.storage <= STORAGE_SHARE * stages.input:
        name = "storage"  # the loader waits on the reads
        ranked = [("storage", stages.input), *[kv for kv in ranked if kv[0] not in ("input", "storage")]]
    return name, ranked[1][1] / max(ranked[0][1], 1e-9)


def advice_for(stages: Stages, bottleneck: str) -> list[str]:
    """What to change, most useful first."""
    s, tips = stages, []
    per_rank_model = s.model / s.world_size
    if bottleneck == "input":
        needed = math.ceil(per_rank_model / max(s.per_core, 1e-9))
        line = (
            f"input-bound: the loader gives {s.input:,.0f} img/s, the model takes {s.model:,.0f}: one core decodes "
            f"{s.per_core:,.0f} img/s, so each rank needs about {needed} workers (data.num_workers={s.workers})"
        )
        usable = min(needed, s.cores_per_rank)
        if usable > s.workers:
            line += f"; raise data.num_workers to {usable} ({s.cores_per_rank} cores per rank here)"
        else:
            line += "; the workers' cores are busy (other processes, or the step itself on a CPU)"
        if needed > s.cores_per_rank:
            line += f"; the model needs more than the {s.cores_per_rank} cores per rank here"
            if s.device.startswith("cuda") and not s.decode_on_device:
                line += ": data.decode_on_device=true (the GPU decodes and resizes)"
        tips.append(line)
    elif bottleneck == "storage":
        tips.append(
            f"storage-bound: the disk gives {s.storage_files_per_s:,.0f} files/s ({s.storage_mb_per_s:,.0f} MB/s) "
            f"at {max(s.workers, 1)} read(s) in flight per rank, the loader {s.input:,.0f} img/s, the model takes "
            f"{s.model:,.0f}: copy the data set to a local disk, raise data.num_workers (more reads in flight), "
            "or use data=shards (large sequential reads)"
        )
    else:
        switches = []
        if s.device.startswith("cuda"):
            if s.precision == "fp32" and s.bf16_supported:
                switches.append("train.precision=bf16")
            if not s.channels_last:
                switches.append("train.channels_last=true")
            if not s.compile:
                switches.append("train.compile=true")
        tip = (
            f"model-bound: the model takes {s.model:,.0f} img/s, the input gives {min(s.input, s.storage):,.0f} "
            f"({min(s.input, s.storage) / max(s.model, 1e-9):.1f}x)"
        )
        tips.append(tip + (f": try {', '.join(switches)}" if switches else ": the input has room to spare"))
    if s.loop < CONTENTION * min(s.storage, s.input, s.model):
        why = (
            "the loader and the step take turns in the training process (data.num_workers=0)"
            if s.workers == 0
            else f"the loader's {s.workers} workers and the step compete for {s.cores_per_rank} cores per rank"
            + (" (the model on the CPU)" if s.device == "cpu" else "")
        )
        tips.append(f"the Trainer's loop runs at {s.loop:,.0f} img/s, below its slowest stage: {why}")
    if s.step_sync_s and s.step_nosync_s and s.step_sync_s > HIDDEN * s.step_nosync_s:
        exposed = s.step_sync_s - s.step_nosync_s
        tips.append(
            f"the gradient all-reduce ({1e3 * (s.all_reduce_s or 0):.1f} ms) does not hide behind the backward: it "
            f"adds {1e3 * exposed:.1f} ms to a {1e3 * s.step_nosync_s:.1f} ms step; raise "
            f"train.grad_accum_steps to {2 * s.grad_accum_steps} (one all-reduce per accumulated step) or the "
            "per-GPU batch"
        )
    return tips


def project(
    stages: Stages,
    samples: int,
    global_batch: int,
    epochs: int,
    val_s: float,
    val_every: int,
    save_s: float,
    saves_per_epoch: float,
    start_s: float,
) -> Projection:
    """epoch = the epoch's images / min(storage, input, model, the Trainer's loop) + validation + saves."""
    bottleneck, headroom = bottleneck_of(stages)
    rate = min(stages.storage, stages.input, stages.model, stages.loop)
    steps = samples // global_batch
    train_s = steps * global_batch / rate
    val_share = val_s / max(val_every, 1)
    epoch_s = train_s + val_share + save_s * saves_per_epoch
    run_s = start_s + epochs * epoch_s
    return Projection(
        rate, bottleneck, headroom, train_s, val_share, save_s * saves_per_epoch, epoch_s, run_s,
        advice_for(stages, bottleneck),
    )  # fmt: skip


def blocker_lines(rooms: list[Room], device_memory: str | None, unwritable: str | None) -> list[str]:
    """One line per thing the run cannot get past."""
    lines = [] if unwritable is None else [f"run folder: {unwritable}"]
    for room in rooms:
        if not room.fits:
            fix = {
                "disk": "free space there, lower train.keep_best, or write the run elsewhere (paths.outputs=)",
                "RAM": "lower data.num_workers or the ranks per node",
                "/dev/shm": "enlarge /dev/shm (docker --shm-size), lower data.num_workers or data.prefetch_factor",
            }[room.what]
            lines.append(
                f"{room.what}: the run needs {room.needed_bytes / 1e9:.2f} GB in {room.where} ({room.detail}), "
                f"{room.free_bytes / 1e9:.2f} GB are free: {fix}"
            )
    if device_memory is not None:
        lines.append(f"device memory: {device_memory}")
    return lines


def write_plan(folder: Path, record: dict[str, Any]) -> tuple[Path, Path]:
    """plan.json (every figure) and plan.md (the same for people), each written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_text(folder / "plan.json", json.dumps(record, indent=2, default=str) + "\n")
    md_path = atomic_write_text(folder / "plan.md", render_markdown(record))
    return md_path, json_path


def render_markdown(r: dict[str, Any]) -> str:
    if r["projection"] is None:  # blocked before anything could be measured
        return "\n".join([
            f"# Plan: {r['command']}", "", f"{r['device']}, {r['world_size']} rank(s); planned run folder "
            f"{r['run_dir']}.", "", "## Verdict", "", "**Blocked** before measuring:",
            *[f"- {line}" for line in r["blockers"]], "",
        ])  # fmt: skip
    p, st = r["projection"], r["stages"]
    lines = [
        f"# Plan: {r['command']}",
        "",
        f"{r['device']}, {r['world_size']} rank(s) ({r['local_ranks']} on this node), {r['cores']} CPU cores; "
        f"planned run folder {r['run_dir']}; measured in {format_duration(r['plan_wall_s'])} "
        f"(budget_s={r['budget_s']:g}).",
        "",
        "## Verdict",
        "",
        ("**Blocked**:" if r["blockers"] else "**Would run.**")
        + "".join(f"\n- {line}" for line in r["blockers"]),
        "",
        f"- epoch: **{format_duration(p['epoch_s'])}** ({format_duration(p['train_s'])} training at "
        f"{p['rate']:,.0f} img/s, {format_duration(p['val_s'])} validation, {format_duration(p['save_s'])} "
        "checkpoints)",
        f"- run: **{format_duration(p['run_s'])}** for {r['epochs']} epochs of {r['train_samples']:,} images "
        "(start-up included, the final evaluation not)",
        f"- bottleneck: **{p['bottleneck']}** (the next stage is {p['headroom']:.2f}x faster)",
        *[f"- {tip}" for tip in p["advice"]],
        "",
        "## Stages (global images/s, every rank together)",
        "",
        "| stage | rate | measured |",
        "|---|---|---|",
        f"| storage | {st['storage']:,.0f} files/s | {r['storage']['files']} uncached files, "
        f"{r['storage']['mb_per_s']:,.1f} MB/s, {r['storage']['concurrency']} read(s) in flight per rank"
        f"{'' if r['storage']['evicted'] else ' (shards: not evicted from the page cache)'} |",
        f"| input | {st['input']:,.0f} img/s | the TrainLoader at data.num_workers={st['workers']}; one core "
        f"{st['per_core']:,.0f} img/s; worker USS {r['input']['worker_uss_mb']:.0f} MB |",
        f"| model | {st['model']:,.0f} img/s | the Trainer's step at {r['model']['micro_batch']} per rank x "
        f"{r['model']['grad_accum_steps']} accumulation; peak device memory "
        f"{_gib(r['model']['peak_gib'])} |",
        f"| the Trainer's loop | {st['loop']:,.0f} img/s | {r['loop']['steps']} steps of train_epoch |",
        f"| validation | {r['validation']['images_per_s']:,.0f} img/s | {r['validation']['images']:,} images, "
        f"{format_duration(r['validation']['pass_s'])} a pass |",
    ]
    if r.get("ddp"):
        d = r["ddp"]
        lines.append(
            f"| DDP | all-reduce {1e3 * d['all_reduce_s']:.1f} ms | step {1e3 * d['step_sync_s']:.1f} ms with "
            f"gradient sync, {1e3 * d['step_nosync_s']:.1f} ms without |"
        )
    lines += ["", "## Room", "", "| what | where | needed | free | from |", "|---|---|---|---|---|"]
    for room in r["room"]:
        lines.append(
            f"| {room['what']} | {room['where']} | {room['needed_bytes'] / 1e9:.2f} GB | "
            f"{room['free_bytes'] / 1e9:.2f} GB | {room['detail']} |"
        )
    lines += [
        "",
        f"Checkpoint: {r['checkpoint']['bytes'] / 1e6:.1f} MB ({r['checkpoint']['parameters']:,} parameters, "
        f"{r['checkpoint']['optimizer_values']:,} optimizer-state values), one save "
        f"{format_duration(r['checkpoint']['save_s'])} (into the plan's folder).",
        "",
    ]
    return "\n".join(lines)


def _gib(value: float | None) -> str:
    return "- (CPU)" if value is None else f"{value:.2f} GiB"


def as_record(stages: Stages, projection: Projection, rooms: list[Room]) -> dict[str, Any]:
    return {
        "stages": asdict(stages),
        "projection": asdict(projection),
        "room": [{**asdict(room), "fits": room.fits} for room in rooms],
    }
