"""delving-train: Hydra entry point of the Trainer (also `python -m delving.train`, under torchrun or srun)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from delving.cli.common import CONFIG_DIR, register_resolvers
from delving.engine.config import register_configs
from delving.dist import shutdown_distributed
from delving.engine.final_eval import run_final_eval
from delving.engine.trainer import Trainer

register_configs()
register_resolvers()


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    trainer = Trainer(cfg, HydraConfig.get().runtime.output_dir)
    try:
        val = trainer.fit()
        if cfg.train.final_eval:
            run_final_eval(trainer)
    finally:
        trainer.close()
        shutdown_distributed()
    return val.get("val_top1_error")  # what a Hydra sweeper would minimise


if __name__ == "__main__":
    main()
