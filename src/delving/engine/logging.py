"""Run outputs on rank 0: metrics.jsonl, a wandb run (offline by default), a progress bar, train.log."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from delving.engine.config import LoggerConfig, WandbMode

log = logging.getLogger("delving")


def setup_console_logging(run_dir: Path, is_main: bool) -> None:
    """Rank 0 logs INFO to the console and train.log; other ranks only warnings, to the console."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
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
        self, run_dir: Path, cfg: LoggerConfig, config: dict[str, Any], wandb_run_id: str | None
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.wandb_run = None
        mode = WandbMode(cfg.wandb.mode)
        if mode is not WandbMode.disabled:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                tags=list(cfg.wandb.tags),
                mode=mode.value,
                dir=str(run_dir),
                id=wandb_run_id,
                resume="allow",  # a resumed run continues the same wandb run
                config=config,
                name=run_dir.name,
            )

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def truncate_after(self, global_step: int) -> None:
        """Drop records a killed run wrote after the checkpoint it resumes from (no duplicate steps)."""
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if json.loads(line).get("step", 0) <= global_step
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(
                {k: v for k, v in record.items() if isinstance(v, int | float)}, step=record["step"]
            )

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def progress_bar(total: int, initial: int, enabled: bool, description: str) -> tqdm:
    # disable=None lets tqdm go quiet by itself when stderr is not a terminal (SLURM logs, CI).
    return tqdm(
        total=total, initial=initial, desc=description, disable=None if enabled else True, dynamic_ncols=True
    )
