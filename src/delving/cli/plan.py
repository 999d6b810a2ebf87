"""delving-plan: the overrides of a delving-train command (also under torchrun), measured on this node and
projected (src/delving/plan/). A `hydra.run.dir=X` given, as delving-train takes it, names the planned run's
folder (run_dir=X): the plan writes nothing there, only into plan_dir."""

from __future__ import annotations

import sys
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, register_all, user_errors

RUN_DIR_OVERRIDE = "hydra.run.dir="


class CheckPlanFirst(Callback):
    """hydra.callbacks of delving-plan (configs/plan.yaml): the checks before anything is measured."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from delving.plan.app import check_plan_first

        with user_errors():
            check_plan_first(config)


@hydra.main(config_path=CONFIG_PATH, config_name="plan", version_base="1.3")
@user_errors()
def _app(cfg: DictConfig) -> None:
    from delving.plan.app import run_plan  # imported when a job runs: --help and --cfg stay quick

    code = run_plan(cfg)
    if code:
        raise SystemExit(code)


def main() -> None:
    register_all()
    sys.argv = [
        f"run_dir={a[len(RUN_DIR_OVERRIDE) :]}" if a.startswith(RUN_DIR_OVERRIDE) else a for a in sys.argv
    ]
    check_command_line("plan")
    _app()


if __name__ == "__main__":
    main()
