"""delving-eval: evaluate a checkpoint with one of the paper's test protocols (see docs/evaluation.md)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, ends_quietly_on_ctrl_c, register_all, user_errors


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
@user_errors()
def _app(cfg: DictConfig) -> None:
    from delving.evaluation.app import run_eval

    run_eval(cfg)


def main() -> None:
    register_all()
    with ends_quietly_on_ctrl_c(
        "delving-eval", lambda: "no predictions file was written (it is written when the evaluation ends)"
    ):
        check_command_line("evaluate")
        _app()


if __name__ == "__main__":
    main()
