"""delving-eval: evaluate a checkpoint with one of the paper's test protocols (see docs/evaluation.md)."""

from __future__ import annotations

import re
import sys

import hydra
from omegaconf import DictConfig

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, ends_quietly_on_ctrl_c, register_all, user_errors


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
@user_errors()
def _app(cfg: DictConfig) -> None:
    from delving.evaluation.app import run_eval

    run_eval(cfg)


# A Hydra override of a key under data. (data.root=DIR, +data.x=1, ++data.x=1), and one choosing the group.
_DATA_KEY = re.compile(r"^\+{0,2}data\.(?P<rest>.+)$")
_DATA_CHOICE = re.compile(r"^[+~]{0,2}data(@[\w.]+)?(=|$)")


def data_keys_onto_checkpoint(argv: list[str]) -> list[str]:
    """data.KEY=VALUE without data=: the data config is the checkpoint's, which has no node on the command
    line, so such keys travel as +data_changes.KEY=VALUE, set over it (delving.evaluation.app)."""
    if any(_DATA_CHOICE.match(arg) for arg in argv):
        return argv
    return [f"+data_changes.{match['rest']}" if (match := _DATA_KEY.match(arg)) else arg for arg in argv]


def main() -> None:
    sys.argv[1:] = data_keys_onto_checkpoint(sys.argv[1:])
    register_all()
    with ends_quietly_on_ctrl_c(
        "delving-eval", lambda: "no predictions file was written (it is written when the evaluation ends)"
    ):
        check_command_line("evaluate")
        _app()


if __name__ == "__main__":
    main()
