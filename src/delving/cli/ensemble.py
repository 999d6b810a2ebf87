"""delving-ensemble: combine predictions files and compare with the paper (see docs/evaluation.md)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, ends_quietly_on_ctrl_c, register_all, user_errors


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="ensemble")
@user_errors()
def _app(cfg: DictConfig) -> None:
    from delving.evaluation.app import run_ensemble

    run_ensemble(cfg)


def main() -> None:
    register_all()
    with ends_quietly_on_ctrl_c(
        "delving-ensemble", lambda: "nothing was written (the files are written together, at the end)"
    ):
        check_command_line("ensemble")
        _app()


if __name__ == "__main__":
    main()
