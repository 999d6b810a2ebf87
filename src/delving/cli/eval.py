"""delving-eval: evaluate a checkpoint with one of the paper's test protocols (see README: Evaluation)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from delving.cli.common import CONFIG_DIR
from delving.evaluation.app import run_eval
from delving.evaluation.config import register_configs


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def _app(cfg: DictConfig) -> None:
    run_eval(cfg)


def main() -> None:
    register_configs()
    _app()


if __name__ == "__main__":
    main()
