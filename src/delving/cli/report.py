"""delving-report: markdown + PNG report of run directories against the paper (see README: Results)."""

from __future__ import annotations

import shlex
import sys

import hydra
from omegaconf import DictConfig

from delving.cli.common import CONFIG_DIR
from delving.report.app import run_report
from delving.report.config import register_configs


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="report")
def _app(cfg: DictConfig) -> None:
    if not cfg.runs:
        raise ValueError("runs=[...] lists no run directory")
    command = cfg.command or shlex.join(["delving-report", *sys.argv[1:]])
    path = run_report(
        list(cfg.runs),
        list(cfg.predictions),
        list(cfg.ensembles),
        list(cfg.init_checks),
        cfg.output_dir,
        cfg.title,
        command,
    )
    print(f"report: {path}")


def main() -> None:
    register_configs()
    _app()


if __name__ == "__main__":
    main()
