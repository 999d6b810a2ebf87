"""delving-init-check: the paper's Sec. 2.2 analysis (response and gradient std per layer at init)."""

from __future__ import annotations

import shlex
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from delving.cli.command_line import check_command_line
from delving.cli.common import CONFIG_PATH, register_all, user_errors


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="init_check")
@user_errors()
def _app(cfg: DictConfig) -> None:
    from delving.report.init_check import OWN_INIT, init_check, render_markdown, write_outputs

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    inits = list(cfg.inits) if cfg.inits else [OWN_INIT if cfg.timm_model else model_cfg["init"]]
    reports = init_check(
        model_cfg, inits, cfg.timm_model, cfg.batch_size, cfg.input_size, cfg.input_std, cfg.seed
    )
    command = shlex.join(["delving-init-check", *sys.argv[1:]])
    output_dir = cfg.output_dir or f"{cfg.paths.outputs}/init_check/{reports[0].model}"
    print(render_markdown(reports, command))
    print(f"written: {write_outputs(reports, output_dir, command)}")


def main() -> None:
    register_all()
    check_command_line("init_check")
    _app()


if __name__ == "__main__":
    main()
