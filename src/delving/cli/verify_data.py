"""delving-verify-data: list every unreadable image of a data set (exit code 1 if there is any)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from delving.data.config import DataConfig
from delving.data.verify import scan_split


@hydra.main(version_base="1.3", config_path="../../../configs", config_name="verify_data")
def _app(cfg: DictConfig) -> None:
    data: DataConfig = OmegaConf.to_object(cfg.data)
    splits = list(cfg.splits) if cfg.splits is not None else [data.train_split, data.val_split]
    processes = cfg.processes if cfg.processes is not None else max(1, data.num_workers)
    bad = 0
    for split in splits:
        for path, reason in scan_split(data, split, processes):
            print(f"BAD {path}: {reason}", flush=True)
            bad += 1
    print(f"{bad} unreadable image(s) in data={data.name.value} splits {splits}")
    if bad:
        sys.exit(1)


def main() -> None:
    ConfigStore.instance().store(group="data", name="base_data", node=DataConfig)
    _app()


if __name__ == "__main__":
    main()
