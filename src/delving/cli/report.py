"""delving-report: markdown + PNG report of run directories against the paper (see docs/results/ and docs/reproducing.md)."""

from __future__ import annotations

import shlex
import sys

import hydra
from omegaconf import DictConfig

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, ends_quietly_on_ctrl_c, register_all, user_errors
from delving.errors import ConfigError


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")
@user_errors()
def _app(cfg: DictConfig) -> None:
    from delving.report.app import run_report

    if not cfg.runs:
        raise ConfigError(
            "runs=[] lists no run directory: give runs=[DIR,...] (delving-train run directories)"
        )
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
    register_all()
    with ends_quietly_on_ctrl_c(
        "delving-report", lambda: "nothing was written (the report is written whole, at the end)"
    ):
        check_command_line("report")
        _app()


if __name__ == "__main__":
    main()
