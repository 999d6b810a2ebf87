"""delving-verify-data: list every unreadable image of a data set (exit code 1 if there is any)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, register_all, user_errors
from delving.errors import ConfigError


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="verify_data")
@user_errors()
def _app(cfg: DictConfig) -> None:
    from delving.data.config import DataConfig
    from delving.data.verify import scan_split

    data: DataConfig = OmegaConf.to_object(cfg.data)  # type: ignore[assignment]
    splits = list(cfg.splits) if cfg.splits is not None else [data.train_split, data.val_split]
    if cfg.processes is not None and cfg.processes < 1:
        raise ConfigError(f"processes={cfg.processes}: give processes=1 or more (or leave it out)")
    processes = cfg.processes if cfg.processes is not None else max(1, data.num_workers)
    bad = 0
    for split in splits:
        for path, reason in scan_split(data, split, processes, show_progress=True):
            print(f"BAD {path}: {reason}", flush=True)
            bad += 1
    print(f"{bad} unreadable image(s) in data={data.name.value} splits {splits}")
    if bad:
        sys.exit(1)


def main() -> None:
    register_all()
    check_command_line("verify_data")
    _app()


if __name__ == "__main__":
    main()
