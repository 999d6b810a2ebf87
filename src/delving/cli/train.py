"""delving-train: Hydra entry point of the Trainer (also `python -m delving.train`, under torchrun or srun)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from delving.cli.common import CONFIG_DIR, register_resolvers
from delving.engine.app import run_train
from delving.engine.config import register_configs

register_configs()
register_resolvers()


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_train(cfg, HydraConfig.get().runtime.output_dir)  # the val error a Hydra sweeper minimises


if __name__ == "__main__":
    main()
