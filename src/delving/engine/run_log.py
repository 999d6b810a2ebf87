"""Run outputs on rank 0: metrics.jsonl, a wandb run (offline by default), progress (bar or lines), train.log."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from delving.engine.config import LoggerConfig, WandbMode
from delving.engine.run_dir import RunDirectory
from delving.errors import UserError
from delving.io import DiskFullError, atomic_write_text, is_disk_full
from delving.progress import Progress, format_duration

log = logging.getLogger("delving")


def setup_console_logging(run: RunDirectory, is_main: bool) -> None:
    """Rank 0 logs INFO to the console and train.log (appended to across relaunches); other ranks only warnings."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run.log_file, mode="a"))
    formatter = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S")
    log.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl and mirrors it to wandb."""

    def __init__(
        self, run: RunDirectory, cfg: LoggerConfig, config: dict[str, Any], wandb_run_id: str | None
    ) -> None:
        self.path = run.metrics
        run_dir = run.path
        self.wandb_run = None
        self._wandb_run_id: str | None = None
        # WANDB_MODE in the environment wins, as wandb's own tools expect (e.g. a site that forbids online).
        mode = WandbMode(os.environ.get("WANDB_MODE") or cfg.wandb.mode)
        if mode is not WandbMode.disabled:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            options = {
                "project": cfg.wandb.project, "entity": cfg.wandb.entity, "tags": list(cfg.wandb.tags),
                "dir": str(run_dir), "id": wandb_run_id, "config": config, "name": run_dir.name,
                "resume": "allow",  # a resumed run continues the same wandb run
            }  # fmt: skip
            try:
                self.wandb_run = wandb.init(
                    mode=mode.value, settings=wandb.Settings(init_timeout=cfg.wandb.init_timeout_s), **options
                )
            except Exception as error:  # no network (CommError after init_timeout), no API key (UsageError)
                if mode is not WandbMode.online:
                    raise
                reason = " ".join(str(error).split("Consider increasing")[0].split()) or type(error).__name__
                log.warning(
                    "logger.wandb.mode=online: wandb could not start within logger.wandb.init_timeout_s=%g s "
                    "(%s); logging offline instead (set logger.wandb.mode=offline to skip the attempt)",
                    cfg.wandb.init_timeout_s, reason,
                )  # fmt: skip
                mode = WandbMode.offline
                self.wandb_run = wandb.init(mode=mode.value, **options)
            if mode is WandbMode.offline:
                log.info(
                    "wandb offline run in %s; upload it with: wandb sync %s", self.wandb_run.dir,
                    Path(self.wandb_run.dir).parent,
                )  # fmt: skip

        self._wandb_run_id = self.wandb_run.id if self.wandb_run is not None else None

    @property
    def wandb_run_id(self) -> str | None:
        return self._wandb_run_id

    def truncate_after(self, global_step: int, keep_val: bool = True) -> None:
        """Drop records written after the checkpoint this run starts from (no step twice in the log).

        A torn last line (a kill during a write) is dropped with a warning instead of breaking every resume.
        """
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append((line, json.loads(line)))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise UserError(
                        f"{self.path}: line {number} is not JSON; fix or delete that line"
                    ) from None
                log.warning("%s: dropped a torn last line (a write that was killed)", self.path)
        kept = [
            line
            for line, record in records
            if record.get("step", 0) < global_step
            or (record.get("step", 0) == global_step and (keep_val or record.get("type") != "val"))
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(clean) + "\n")
        except OSError as error:  # a torn last line is dropped by the relaunch (truncate_after)
            if is_disk_full(error, self.path.parent):
                raise DiskFullError(self.path) from None
            raise
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(
                    {k: v for k, v in record.items() if isinstance(v, int | float)}, step=record["step"]
                )
            except Exception as error:  # its service process died (SLURM's scancel signals it too)
                self._wandb_gone(error)

    def _wandb_gone(self, error: Exception) -> None:
        """One line, once: the run goes on with metrics.jsonl alone."""
        if self.wandb_run is not None:
            log.warning(
                "wandb stopped taking records (%s: %s); metrics.jsonl holds every record",
                type(error).__name__, error,
            )  # fmt: skip
        self.wandb_run = None

    def close(self) -> None:
        """Finishes the wandb run and shuts wandb down now, not in its atexit hook: on a stop its service may
        be gone (the same signal reached it), and the hook would then end the process with a traceback."""
        if self._wandb_run_id is None:
            return
        import wandb

        try:
            if self.wandb_run is not None:
                self.wandb_run.finish()
        except Exception as error:
            self._wandb_gone(error)
        finally:
            self.wandb_run = None
            with contextlib.suppress(Exception):  # a service that is gone has nothing left to shut down
                wandb.teardown()  # unregisters its atexit hook before it talks to the service


class TrainingProgress:
    """Rank 0's progress through one epoch, fed plain numbers: a bar on a terminal, else a plain line (for
    SLURM output files, CI) every `logger.log_every_steps` steps and at least every `logger.log_every_seconds`.

    The time-based line is decided by rank 0 (`due`) and agreed by every rank, since its loss needs a
    collective; `report` then gives the images/s of the window since the last report and starts a new one.
    """

    def __init__(
        self,
        epoch: int,
        epochs: int,
        steps: int,
        step_in_epoch: int,
        batch_size: int,
        every_s: float,
        show: bool,
        bar: bool,
    ) -> None:
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.every_s = float(every_s)
        # show: rank 0; bar: logger.progress_bar (off, rank 0 writes plain lines even on a terminal).
        self.progress = Progress(
            steps, f"epoch {epoch}", "steps", enabled=show, initial=step_in_epoch, auto_lines=False, bar=bar
        )
        self.plain = self.progress.plain
        self._reset(step_in_epoch)

    def _reset(self, step_in_epoch: int) -> None:
        self.start, self.start_step, self.wait = time.perf_counter(), step_in_epoch, 0.0

    def waited(self, seconds: float) -> None:
        self.wait += seconds

    def due(self) -> bool:
        return self.plain and time.perf_counter() - self.start >= self.every_s

    def step(self) -> None:
        self.progress.update(1)

    def report(self, step_in_epoch: int, loss: float, lr: float) -> float:
        """Images/s since the last report; writes the line when plain; starts a new window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        window_steps = step_in_epoch - self.start_step
        images_per_s = window_steps * self.batch_size / elapsed
        self.progress.set_postfix(loss=f"{loss:.3f}", img_s=f"{images_per_s:.0f}")
        if self.plain and window_steps:
            per_step = elapsed / window_steps
            epoch_left = self.steps - step_in_epoch
            run_left = epoch_left + (self.epochs - self.epoch - 1) * self.steps
            self.progress.emit(
                f"epoch {self.epoch}/{self.epochs} step {step_in_epoch}/{self.steps} | loss {loss:.4f} | "
                f"lr {lr:.3g} | {images_per_s:.0f} img/s | data wait {100 * self.wait / elapsed:.0f}% | "
                f"epoch ETA {format_duration(epoch_left * per_step)} | run ETA {format_duration(run_left * per_step)}"
            )
        self._reset(step_in_epoch)
        return images_per_s

    def close(self) -> None:
        self.progress.close()
