"""What delving-plan does: build the planned run's Trainer, measure each stage within the budget, project the
run, write plan.md + plan.json into its own folder, and end non-zero when something blocks the run.

Nothing is written into the planned run's folder: the Trainer the plan measures lives in a scratch folder
inside plan_dir (removed at the end), with wandb off and no resume.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from delving.dist import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    environment_ranks,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from delving.engine.config import AppConfig, WandbMode
from delving.engine.preflight import preflight
from delving.errors import UserError
from delving.io import unwritable_place
from delving.plan import measure
from delving.plan.config import PLAN_KEYS
from delving.plan.projection import Stages, as_record, blocker_lines, project, write_plan
from delving.plan.room import checkpoint_bytes, disk_room, local_ranks, ram_room, shm_room
from delving.reproducible import pin
from delving.run_identity import run_name_from_overrides

EXIT_BLOCKED = 3  # the plan ran and found something that stops the run (2 stays a mistake in the command)
SCRATCH = ".measuring"  # the measured Trainer's own folder inside plan_dir

# Shares of budget_s per stage (the loop and the model get most: their rates decide the projection).
SHARES = {
    "storage": 0.08,
    "per_core": 0.06,
    "input": 0.16,
    "model": 0.2,
    "ddp": 0.08,
    "val": 0.1,
    "loop": 0.24,
}


def train_part(cfg: DictConfig) -> DictConfig:
    """delving-train's config inside the plan's: every key but the plan's own and Hydra's."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k not in (*PLAN_KEYS, "hydra")])


def check_plan_first(config: DictConfig) -> None:
    """The training config's checks (delving-train's preflight) and a writable plan_dir, before anything is
    measured (delving.cli.plan.CheckPlanFirst calls it)."""
    HydraConfig.instance().set_config(config)
    preflight(train_part(config), environment_ranks(dict(os.environ))[1])
    check_plan_values(float(config.budget_s), Path(str(config.plan_dir)))


def check_plan_values(budget_s: float, folder: Path) -> None:
    """The plan's own keys: a budget above 0 and a plan_dir this user can write."""
    if not budget_s > 0:
        raise UserError(f"budget_s={budget_s}: give the measuring time in seconds, above 0 (default 180)")
    why = unwritable_place(folder.absolute())
    if why is not None:
        raise UserError(f"plan_dir={folder}: {why}; give plan_dir= a folder you can write")


def planned_run_dir(cfg: DictConfig) -> Path:
    """The folder delving-train would use for the same overrides (its hydra.run.dir), or run_dir= if given."""
    if cfg.run_dir:
        return Path(str(cfg.run_dir))
    overrides = [
        o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=", 1)[0] not in PLAN_KEYS
    ]
    name = cfg.run_name or run_name_from_overrides(overrides)
    return Path(str(cfg.paths.outputs)) / str(cfg.experiment_name) / str(name)


class Reporter:
    """Progress lines on rank 0, each with the time since the plan started."""

    def __init__(self, ctx: DistributedContext) -> None:
        self.ctx, self.start = ctx, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.ctx.is_main:
            print(f"[plan {time.perf_counter() - self.start:6.1f} s] {message}", file=sys.stderr, flush=True)


def run_plan(cfg: DictConfig) -> int:
    """Measures and projects the run `cfg` describes; returns the exit code (0, or EXIT_BLOCKED)."""
    started = time.perf_counter()
    plan_dir, run_dir = Path(str(cfg.plan_dir)).absolute(), planned_run_dir(cfg).absolute()
    check_plan_values(float(cfg.budget_s), plan_dir)
    if cfg.train.reproducible:
        pin()  # as the run does: its thread count and kernels are what the plan times (the demo: one thread)
    ctx = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        typed = preflight(train_part(cfg), ctx.world_size)
        say = Reporter(ctx)
        record = measure_run(typed, ctx, plan_dir, run_dir, float(cfg.budget_s), say)
        if not ctx.is_main:
            return 0
        record.update(
            command=" ".join(["delving-plan", *HydraConfig.get().overrides.task]),
            run_dir=str(run_dir),
            budget_s=float(cfg.budget_s),
            plan_wall_s=time.perf_counter() - started,
        )
        md, js = write_plan(plan_dir, record)
        print(md.read_text(), flush=True)
        say(f"wrote {md} and {js}")
        for line in record["blockers"]:
            print(f"blocker: {line}", file=sys.stderr, flush=True)
        return EXIT_BLOCKED if record["blockers"] else 0
    finally:
        shutdown_distributed()


def _for_measuring(cfg: AppConfig) -> AppConfig:
    """The planned config as the measured Trainer runs it: no resume, no weights to load, no wandb."""
    measured = copy.deepcopy(cfg)
    measured.resume, measured.init_from = None, None
    measured.logger.wandb.mode = WandbMode.disabled
    measured.logger.progress_bar = False
    measured.logger.log_every_seconds = 1e9
    return measured


def _sum(ctx: DistributedContext, value: float) -> float:
    return float(sum(gather_objects(ctx, value))) if ctx.is_distributed else value


def _agreed_steps(ctx: DistributedContext, seconds_per_step: float, share: float, low: int, high: int) -> int:
    """Steps that fit `share` seconds, rank 0's figure on every rank (their collectives must match)."""
    steps = max(low, min(high, int(share / max(seconds_per_step, 1e-9))))
    return int(broadcast_from_main(ctx, [float(steps)])[0])


def measure_run(
    cfg: AppConfig, ctx: DistributedContext, plan_dir: Path, run_dir: Path, budget: float, say: Reporter
) -> dict[str, Any]:
    """Every stage measured on this rank (rates summed over the ranks), the room checked, the run projected."""
    from delving.engine.trainer import Trainer  # the model and loader code load once the checks pass

    scratch = plan_dir / SCRATCH
    scratch.mkdir(parents=True, exist_ok=True)
    say(f"building the run's Trainer (model {cfg.model.name.value}, data {cfg.data.name.value}, listing)")
    start = time.perf_counter()
    trainer = Trainer(_for_measuring(cfg), scratch, ctx)
    build_s = time.perf_counter() - start
    try:
        return _measure(trainer, ctx, run_dir, budget, say, build_s)
    finally:
        trainer.release_loaders()
        trainer.close()
        barrier(ctx)
        if ctx.is_main:
            shutil.rmtree(scratch, ignore_errors=True)


def _measure(
    trainer: Any, ctx: DistributedContext, run_dir: Path, budget: float, say: Reporter, build_s: float
) -> dict[str, Any]:
    cfg, loader = trainer.cfg, trainer.train_loader
    reader, workers = loader.batches.reader, cfg.data.num_workers
    concurrency = max(workers, 1)
    share = {k: v * budget for k, v in SHARES.items()}
    world = ctx.world_size
    ranks_here = local_ranks(world)
    shm = None
    if workers:  # checked before the workers start: a /dev/shm too small kills them at their first batch
        rows = cfg.train.batch_size // world
        shm = shm_room(ranks_here, workers, cfg.data.prefetch_factor, rows * 3 * (cfg.data.crop_size**2 + 4))
        if not shm.fits:
            say(
                "/dev/shm cannot hold the loader's batches: its workers would die at the first one; not measured"
            )
            return {
                "blockers": blocker_lines([shm], None, unwritable_place(run_dir)),
                "room": [{**asdict(shm), "fits": False}], "projection": None, "device": _device_name(ctx.device),
                "world_size": world, "local_ranks": ranks_here, "cores": _cores(), "epochs": cfg.train.epochs,
            }  # fmt: skip

    rng = np.random.default_rng((cfg.seed, ctx.rank, 4242))
    sample = rng.choice(len(reader), size=min(len(reader), 64 * concurrency), replace=False).tolist()
    say(f"storage: reading up to {len(sample)} files evicted from the page cache, {concurrency} at a time")
    barrier(ctx)
    storage, blobs = measure.storage_rate(reader, sample, concurrency, share["storage"])
    storage_files = _sum(ctx, storage.files_per_s)
    say(f"storage: {storage_files:,.0f} files/s, {_sum(ctx, storage.mb_per_s):,.1f} MB/s")

    per_core = measure.transform_rate_per_core(cfg.data, blobs, share["per_core"])
    say(f"input: decode + the paper's transform, one core: {per_core:,.0f} img/s")
    say(f"input: the TrainLoader at data.num_workers={workers}")
    loaded, (images, labels) = measure.loader_rate(loader, 10_000, share["input"])
    input_rate = _sum(ctx, loaded.images_per_s)
    worker_mem = measure.worker_memory() if workers else []
    worker_uss = max((m.uss_mb for m in worker_mem), default=0.0)
    say(
        f"input: {input_rate:,.0f} img/s; worker USS {worker_uss:.0f} MB (first batch {loaded.first_batch_s:.1f} s)"
    )

    micro = len(labels) // cfg.train.grad_accum_steps
    say(f"model: the Trainer's step, {micro} images per rank x {cfg.train.grad_accum_steps} accumulation")
    model, oom = model_stage(trainer, ctx, images, labels, share["model"])
    model_rate = world * model.batch / model.seconds
    say(f"model: {model_rate:,.0f} img/s" + (f"; {oom}" if oom else ""))

    ddp = None
    if ctx.is_distributed:
        say("DDP: the gradients' all-reduce, and the step without it")
        reduce_s = measure.all_reduce_seconds(trainer.model, ctx)
        steps = _agreed_steps(ctx, model.seconds, share["ddp"], 2, 50)
        nosync = measure.model_step_rate(
            trainer, *measure.repeat_batch(images, labels, model.batch), 0.0, 1, steps, sync_gradients=False
        )
        ddp = {"all_reduce_s": reduce_s, "step_sync_s": model.seconds, "step_nosync_s": nosync.seconds}
        say(f"DDP: all-reduce {1e3 * reduce_s:.1f} ms; step {1e3 * model.seconds:.1f} ms, "
            f"{1e3 * nosync.seconds:.1f} ms without sync")  # fmt: skip

    say("validation: the val loader and the forward")
    val_rate_rank, _ = measure.validation_rate(trainer, share["val"])
    val_rate = _sum(ctx, val_rate_rank)
    val_images = trainer.val_loader.num_samples
    val_pass_s = val_images / max(val_rate, 1e-9)
    say(f"validation: {val_rate:,.0f} img/s, {val_images:,} images a pass")

    steps_per_epoch = loader.steps_per_epoch
    guess = cfg.train.batch_size / min(input_rate, model_rate)
    loop_steps = _agreed_steps(ctx, guess, share["loop"], 2, max(2, steps_per_epoch - 1))
    loop_steps = min(loop_steps, steps_per_epoch)
    say(f"the Trainer's loop: {loop_steps} steps of train_epoch")
    loop_rate = measure.trainer_loop_rate(trainer, loop_steps)
    say(f"the Trainer's loop: {loop_rate:,.0f} img/s")

    say("checkpoint: one save of last.pt (into the plan's scratch folder)")
    start = time.perf_counter()
    trainer._save()
    save_s = time.perf_counter() - start
    ckpt = checkpoint_bytes(trainer.model, trainer.optimizer, trainer.ema)
    saved = trainer.run.last.stat().st_size if ctx.is_main else ckpt
    rank_rss = measure.process_memory().rss_mb
    # What this node's plan processes hold now: the ranks, and whichever loader workers are still alive.
    held_now = ranks_here * (rank_rss + sum(m.uss_mb for m in measure.worker_memory()))

    rooms = [
        disk_room(run_dir, max(saved, ckpt), cfg.train.keep_best, _predictions_bytes(cfg, val_images)),
        ram_room(ranks_here, rank_rss, workers, worker_uss, held_now),
        *([shm] if shm is not None else []),
    ]

    stages = Stages(
        storage=storage_files, input=input_rate, model=model_rate, loop=loop_rate, per_core=per_core,
        workers=workers, cores_per_rank=max(1, _cores() // ranks_here), local_ranks=ranks_here,
        world_size=world, device=str(trainer.device), storage_files_per_s=storage_files,
        storage_mb_per_s=_sum(ctx, storage.mb_per_s), precision=cfg.train.precision.value,
        channels_last=cfg.train.channels_last, compile=cfg.train.compile,
        bf16_supported=trainer.device.type == "cuda" and torch.cuda.is_bf16_supported(),
        decode_on_device=cfg.data.decode_on_device, grad_accum_steps=cfg.train.grad_accum_steps,
        **(ddp or {}),
    )  # fmt: skip
    val_every = cfg.train.val_every_epochs
    saves = 1 + (1 / val_every) + (steps_per_epoch // cfg.train.checkpoint_every_steps
                                   if cfg.train.checkpoint_every_steps else 0)  # fmt: skip
    projection = project(
        stages, loader.num_samples, cfg.train.batch_size, cfg.train.epochs, val_pass_s, val_every, save_s,
        saves, build_s + loaded.first_batch_s,
    )  # fmt: skip
    unwritable = unwritable_place(run_dir)
    return {
        **as_record(stages, projection, rooms),
        "blockers": blocker_lines(rooms, oom, unwritable),
        "device": _device_name(trainer.device),
        "world_size": world,
        "local_ranks": ranks_here,
        "cores": _cores(),
        "epochs": cfg.train.epochs,
        "train_samples": loader.num_samples,
        "steps_per_epoch": steps_per_epoch,
        "global_batch": cfg.train.batch_size,
        "startup_s": build_s + loaded.first_batch_s,
        "storage": {
            "files": storage.files,
            "concurrency": storage.concurrency,
            "evicted": storage.evicted,
            "files_per_s": storage_files,
            "mb_per_s": _sum(ctx, storage.mb_per_s),
        },
        "input": {
            "images_per_s": input_rate,
            "per_core": per_core,
            "workers": workers,
            "worker_uss_mb": worker_uss,
            "worker_rss_mb": max((m.rss_mb for m in worker_mem), default=0.0),
            "first_batch_s": loaded.first_batch_s,
        },
        "model": {
            "images_per_s": model_rate,
            "step_s": model.seconds,
            "steps": model.steps,
            "micro_batch": model.batch if oom else model.batch // cfg.train.grad_accum_steps,
            "grad_accum_steps": cfg.train.grad_accum_steps,
            "peak_gib": model.peak_gib,
            "precision": cfg.train.precision.value,
            "channels_last": cfg.train.channels_last,
            "compile": cfg.train.compile,
            "out_of_memory": oom,
        },
        "ddp": ddp,
        "validation": {"images_per_s": val_rate, "images": val_images, "pass_s": val_pass_s},
        "loop": {"images_per_s": loop_rate, "steps": loop_steps},
        "checkpoint": {
            "bytes": max(saved, ckpt),
            "save_s": save_s,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "optimizer_values": sum(
                t.numel()
                for s in trainer.optimizer.state_dict()["state"].values()
                for t in s.values()
                if isinstance(t, torch.Tensor)
            ),
        },
        "rank_rss_mb": rank_rss,
    }


def model_stage(
    trainer: Any, ctx: DistributedContext, images: torch.Tensor, labels: torch.Tensor, share: float
) -> tuple[measure.StepRate, str | None]:
    """The step at the configured batch; on an out-of-memory, the largest micro-batch that fits (measured
    there) and the accumulation that keeps the global batch, as the finding."""
    accum = trainer.cfg.train.grad_accum_steps
    try:
        first = measure.model_step_rate(trainer, images, labels, 0.0, warmup=1, min_steps=1)
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        if not measure.is_out_of_memory(error):
            raise
        trainer.optimizer.zero_grad(set_to_none=True)
        micro = len(labels) // accum
        timed = measure.largest_fitting_batch(trainer, images, labels, micro, share)
        per_rank = trainer.cfg.train.batch_size // ctx.world_size
        if timed is None:
            return measure.StepRate(math.inf, 0, 0.0, None, 1), (
                f"one image per rank does not fit for model={trainer.cfg.model.name.value}: a smaller model "
                "or a device with more memory"
            )
        fits = timed.batch
        new_accum = next(k for k in range(-(-per_rank // fits), per_rank + 1) if per_rank % k == 0)
        finding = (
            f"the step at {micro} images per rank does not fit; {fits} does: add "
            f"train.grad_accum_steps={new_accum} (the global batch {trainer.cfg.train.batch_size} stays)"
        )
        trainer.cfg.train.grad_accum_steps = new_accum
        return timed, finding
    steps = _agreed_steps(ctx, first.seconds, share, 2, 200)
    timed = measure.model_step_rate(trainer, images, labels, 0.0, warmup=0, min_steps=steps)
    timed.peak_gib, timed.warmup_s = first.peak_gib, first.warmup_s
    return timed, None


def _predictions_bytes(cfg: AppConfig, val_images: int) -> int:
    """The final evaluation's predictions file: one row of class probabilities per val image."""
    if not cfg.train.final_eval:
        return 0
    width = 2 if cfg.eval.probs_dtype.value == "float16" else 4
    return val_images * int(cfg.model.num_classes or 1000) * width


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU ({torch.get_num_threads()} threads)"


__all__ = ["EXIT_BLOCKED", "check_plan_first", "run_plan"]
