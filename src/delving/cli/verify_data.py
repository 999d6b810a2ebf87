"""delving-verify-data: list every unreadable image of a data set (exit code 1 if there is any)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, ends_quietly_on_ctrl_c, register_all, user_errors
from delving.errors import ConfigError

# The running scan's ScanTally and its splits: the line a Ctrl-C ends with.
_scan: list = []


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="verify_data")
@user_errors()
def _app(cfg: DictConfig) -> None:
    from delving.data.config import DataConfig
    from delving.data.verify import ScanTally, scan_split

    data: DataConfig = OmegaConf.to_object(cfg.data)  # type: ignore[assignment]
    splits = list(cfg.splits) if cfg.splits is not None else [data.train_split, data.val_split]
    if cfg.processes is not None and cfg.processes < 1:
        raise ConfigError(f"processes={cfg.processes}: give processes=1 or more (or leave it out)")
    processes = cfg.processes if cfg.processes is not None else max(1, data.num_workers)
    tally = ScanTally()
    _scan[:] = [tally, splits]
    bad = 0
    for split in splits:
        for path, reason in scan_split(data, split, processes, show_progress=True, tally=tally):
            print(f"BAD {path}: {reason}", flush=True)
            bad += 1
    print(f"{bad} unreadable image(s) in data={data.name.value} splits {splits}")
    if bad:
        sys.exit(1)


def main() -> None:
    register_all()
    with ends_quietly_on_ctrl_c("delving-verify-data", _checked_so_far):
        check_command_line("verify_data")
        _app()


def _checked_so_far() -> str:
    if not _scan:
        return "no file was checked yet"
    tally, splits = _scan
    return tally.describe(splits)


if __name__ == "__main__":
    main()
