"""What delving-train does, behind its thin Hydra entry point: a run's whole life on one machine or many.

launch -> check every value -> lock the run directory -> resume or start -> train (a signal saves and
exits with EXIT_STOPPED, under SLURM requeueing the job; Ctrl-C/SIGHUP end on their signal) -> final
evaluation once (a signal during it ends the run unfinished: the relaunch evaluates again) ->
finished.json, so a rerun of a finished run only says so.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from delving.dist import (
    DistributedContext,
    agree,
    environment_ranks,
    failing_together,
    init_distributed,
    pick_device,
    shutdown_distributed,
)
from delving.engine.config import AppConfig
from delving.engine.preflight import preflight
from delving.engine.run_dir import FINISHED_FILE, RunDirectory, check_run_dir_writable, starts_fresh
from delving.engine.run_log import log, setup_console_logging
from delving.engine.signals import RunStopped, StopRequested, StopSignals, requeue_slurm_job
from delving.errors import UserError
from delving.io import DiskFullError
from delving.reproducible import pin
from delving.run_identity import run_name_from_overrides

if TYPE_CHECKING:  # the model, loader and evaluation code (timm, torchvision) load only once the checks pass
    from delving.engine.trainer import Trainer


def check_launcher(cfg: DictConfig) -> None:
    if cfg.launcher.name == "slurm" and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise UserError(
            "launcher=slurm submits jobs through Hydra's submitit launcher, which needs multirun: add -m "
            "(delving-train -m launcher=slurm ...); without it the run would train here, on this machine"
        )


def check_first(config: DictConfig) -> None:
    """Every check of a single run before Hydra makes its folder, its .hydra/ and train.log, so a refused
    command leaves nothing behind (delving.cli.train.CheckFirst calls it; a sweep's jobs check in run_train)."""
    HydraConfig.instance().set_config(config)  # the run folder's name reads the overrides
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    check_launcher(task)
    _, world_size, local_rank = environment_ranks(dict(os.environ))
    preflight(task, world_size)
    pick_device(str(task.train.device), local_rank)  # a GPU for this rank, or one line why not
    check_run_dir_writable(Path(str(config.hydra.run.dir)).absolute())


def run_train(cfg: DictConfig, run_dir: str | Path) -> float | None:
    """Trains (or continues) the run in `run_dir`; returns the last val top-1 error for a sweeper."""
    check_launcher(cfg)
    if cfg.train.reproducible:
        pin()  # before the run's first tensor operation: torch reads the instruction set at its first kernel
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a single run has checked it in check_first
        check_run_dir_writable(Path(run_dir))
    ctx = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    run = RunDirectory(run_dir)
    setup_console_logging(run, ctx.is_main)
    try:
        with StopSignals() as stop:  # from the start: a signal during set-up stops at the first step
            with failing_together(ctx):
                typed = preflight(cfg, ctx.world_size)  # the typed config, from here on
            with failing_together(ctx):
                if ctx.is_main:
                    _claim(run, typed)
            return _train_and_evaluate(typed, run, ctx, stop)
    except DiskFullError as error:  # last.pt, metrics.jsonl, predictions: the same advice
        kept = (
            "" if error.path == run.last else f"{run.last} is intact; " if run.last.is_file()
            else "no last.pt was saved yet; "
        )  # fmt: skip
        raise DiskFullError(
            error.path, f"{kept}free space there, then relaunch the same command (resume=auto) to continue"
        ) from None
    finally:
        run.unlock()
        shutdown_distributed()


def _claim(run: RunDirectory, cfg: AppConfig) -> None:
    """Rank 0: lock the run directory; refuse to mix a new run with an old one unless told to start over."""
    run.lock()
    fresh = starts_fresh(cfg.resume)
    if fresh and run.has_outputs():
        if not cfg.start_over:
            raise UserError(
                f"resume=null but {run.path} already holds a run (last.pt, metrics). Relaunch with resume=auto to "
                "continue it, add start_over=true to move its files to previous/ and start again, or choose "
                "another run_name="
            )
        run.move_outputs_aside()
    if cfg.run_name is None and not run.last.is_file() and _named_from_overrides(run):
        _say_it_is_a_new_run(run)


def _named_from_overrides(run: RunDirectory) -> bool:
    """A single run whose folder the default naming chose (not run_name=, not hydra.run.dir=, not a sweep)."""
    hydra = HydraConfig.get()
    return hydra.mode == RunMode.RUN and run.path.name == run_name_from_overrides(list(hydra.overrides.task))


def _say_it_is_a_new_run(run: RunDirectory) -> None:
    """An unnamed run is named from its overrides: train.epochs=7 beside a finished run starts a new run in
    its own folder instead of extending that one, so say so (and how to extend) before the work."""
    finished = sorted(
        p.parent.name for p in run.path.parent.glob(f"*/{FINISHED_FILE}") if p.parent != run.path
    )
    if finished:
        log.warning(
            "a new run in %s: without run_name= a run is named from its overrides (%s), so it does not extend "
            "the finished run%s %s of %s; to extend one, give its name: run_name=%s and the same overrides",
            run.path, run.path.name, "s" if len(finished) > 1 else "", ", ".join(finished), run.path.parent,
            finished[0],
        )  # fmt: skip


def _train_and_evaluate(
    cfg: AppConfig, run: RunDirectory, ctx: DistributedContext, stop: StopSignals
) -> float | None:
    finished = run.finished()
    if finished is not None and cfg.resume == "auto" and _trained_epochs(run, finished) < cfg.train.epochs:
        log.info("%s finished after fewer epochs: train.epochs=%d extends it", run.path, cfg.train.epochs)
        if ctx.is_main:
            _warn_of_older_predictions(run, cfg.eval.protocol.value if cfg.train.final_eval else None)
        finished = None
    if finished is not None and cfg.resume == "auto":
        log.info(
            "%s finished on %s (%s); nothing to do. start_over=true with resume=null trains it again.",
            run.path, finished.get("finished"), _finished_summary(finished),
        )  # fmt: skip
        return finished.get("val_top1_error")
    from delving.engine.trainer import Trainer

    trainer = Trainer(cfg, run, ctx, stop)
    try:
        val = trainer.fit()
        trainer.release_loaders()
        # A signal during the last validation or save (on any rank: agreed): last.pt is complete, stop here.
        if agree(ctx, [int(stop.requested)])[0]:
            raise StopRequested(stop.received or signal.SIGTERM)
        stop.raise_now = True  # no step boundaries from here: a signal ends the evaluation at once
        summary = _final_eval(cfg, trainer) if cfg.train.final_eval else None
        stop.raise_now = False
        if agree(ctx, [int(stop.requested)])[0]:  # however late it came, a stop leaves the run unfinished
            raise StopRequested(stop.received or signal.SIGTERM)
        if ctx.is_main:
            top1 = val.get("val_top1_error")
            run.mark_finished(
                {
                    "val_top1_error": top1,
                    "global_step": trainer.state.global_step,
                    "epochs": trainer.state.epoch,
                    "final_eval": summary,
                }
            )
        return val.get("val_top1_error")
    except StopRequested as request:
        request.__traceback__ = None  # its frames hold the loader iterators: free them so the workers end
        stop.raise_now = False
        trainer.release_loaders()
        _after_stop(cfg, ctx, request, trained=trainer.state.epoch >= cfg.train.epochs)
        raise RunStopped(request.signum) from None
    finally:
        trainer.close()


def _final_eval(cfg: AppConfig, trainer: Trainer) -> dict[str, Any]:
    from delving.evaluation.app import final_evaluation

    summary = final_evaluation(
        trainer.model, trainer.config, cfg.data, cfg.eval, trainer.run, trainer.ctx, trainer.run.last,
        trainer.classes,
    )  # fmt: skip
    with failing_together(trainer.ctx):  # a full disk on rank 0 stops every rank
        if trainer.metrics is not None:
            trainer.metrics.write({"type": "final_eval", "step": trainer.state.global_step, **summary})
    return summary


def _after_stop(cfg: AppConfig, ctx: DistributedContext, request: StopRequested, trained: bool) -> None:
    """last.pt is saved (or the run had finished training): requeue under SLURM on SIGUSR1, then exit."""
    name = signal.Signals(request.signum).name
    requeued = False
    if ctx.is_main and request.signum == signal.SIGUSR1 and cfg.train.requeue_on_usr1:
        requeued = requeue_slurm_job()
    agree(ctx, [0])  # no rank exits before rank 0 has requeued (srun --kill-on-bad-exit would kill it)
    if ctx.is_main:
        log.warning(
            "stopped on %s%s; last.pt holds the state. %s", name,
            " before the final evaluation ended (no finished.json)" if trained and cfg.train.final_eval else "",
            "The job is requeued and continues when it starts again." if requeued
            else "Relaunch the same command (resume=auto) to continue"
            + (", it evaluates again." if trained and cfg.train.final_eval else "."),
        )  # fmt: skip


def _finished_summary(finished: dict[str, Any]) -> str:
    """finished.json in words: "val top-1 error 73.45 %; final evaluation dense: top-1 74.50 %, top-5 20.90 %"."""
    parts = [f"val top-1 error {_percent(finished.get('val_top1_error'))}"]
    final = finished.get("final_eval")
    if isinstance(final, dict):
        parts.append(
            f"final evaluation {final.get('protocol', '')}: top-1 {_percent(final.get('top1_error'))}, "
            f"top-5 {_percent(final.get('top5_error'))} on {final.get('num_images', '?')} images"
        )
    else:
        parts.append("no final evaluation")
    return "; ".join(parts)


def _percent(value: Any) -> str:
    return f"{value:.2f} %" if isinstance(value, int | float) else "unknown"


def _warn_of_older_predictions(run: RunDirectory, final_protocol: str | None) -> None:
    """Extending a run rewrites only its own final evaluation's predictions: the others are of the old last.pt."""
    own = run.predictions(final_protocol).name if final_protocol else None
    older = sorted(p.name for p in run.path.glob("predictions*.npz") if p.name != own)
    if older:
        log.warning(
            "%s: %s came from the checkpoint before this extension and stay as they "
            "are; once it ends, evaluate again (delving-eval checkpoint=%s ...) and redo any ensemble of them",
            run.path, ", ".join(older), run.path,
        )  # fmt: skip


def _trained_epochs(run: RunDirectory, finished: dict[str, Any]) -> int:
    """How many epochs a finished run trained (finished.json; last.pt's for a record written before that)."""
    if "epochs" in finished:
        return int(finished["epochs"])
    if not run.last.is_file():
        return 1 << 30  # nothing to extend from
    from delving.checkpoint import Checkpoint

    return int(Checkpoint.load(run.last).train_state.get("epoch", 0))
