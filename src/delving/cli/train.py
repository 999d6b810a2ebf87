"""delving-train: Hydra entry point of the Trainer (also `python -m delving.train`, under torchrun or srun)."""

from __future__ import annotations

from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, register_all, user_errors
from delving.engine.signals import RunStopped


class CheckFirst(Callback):
    """hydra.callbacks of delving-train (configs/train.yaml): every check before Hydra makes the run folder,
    so a refused command leaves nothing behind."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from delving.engine.app import check_first

        with user_errors():
            check_first(config)


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
@user_errors()
def _app(cfg: DictConfig) -> float | None:
    from delving.engine.app import run_train  # imported when a job runs: --help and --cfg stay quick

    return run_train(cfg, HydraConfig.get().runtime.output_dir)  # the val error a Hydra sweeper minimises


def main() -> None:
    register_all()
    check_command_line("train")
    try:
        _app()
    except RunStopped as stopped:  # saved and closed: exit 75, or end on the Ctrl-C/SIGHUP that stopped it
        stopped.exit()


if __name__ == "__main__":
    main()
