"""delving-ensemble: combine predictions files and compare with the paper (see README: Evaluation)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from delving.cli.common import CONFIG_DIR
from delving.evaluation.app import run_ensemble
from delving.evaluation.config import register_configs


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="ensemble")
def _app(cfg: DictConfig) -> None:
    run_ensemble(cfg)


def main() -> None:
    register_configs()
    _app()


if __name__ == "__main__":
    main()
