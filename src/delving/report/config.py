"""Config schemas of delving-report and delving-init-check (Hydra ConfigStore)."""

from __future__ import annotations

from dataclasses import dataclass, field

from delving.models.config import ModelConfig
from delving.paths import PathsConfig


@dataclass
class InitCheckAppConfig:
    """delving-init-check (configs/init_check.yaml)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # Any timm.create_model name (resnet18, vit_small_patch16_224, ...); `model` is then unused.
    timm_model: str | None = None
    # Several schemes in one table and plot; None: model.init (timm: its own init).
    inits: list[str] | None = None
    batch_size: int = 2
    input_size: int | None = None  # None: the model's training size
    input_std: float = 1.0
    seed: int = 0
    output_dir: str | None = None  # None: <paths.outputs>/init_check/<model>
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class ReportAppConfig:
    """delving-report (configs/report.yaml)."""

    runs: list[str] = field(default_factory=list)  # run directories (or folders holding run directories)
    # Extra predictions files (delving-eval writes next to the checkpoint, where runs= finds them anyway).
    predictions: list[str] = field(default_factory=list)
    ensembles: list[str] = field(default_factory=list)  # ensemble.json files of delving-ensemble
    init_checks: list[str] = field(default_factory=list)  # init_check.json files of delving-init-check
    output_dir: str = "outputs/report"  # configs/report.yaml: ${paths.outputs}/report
    paths: PathsConfig = field(default_factory=PathsConfig)
    title: str = "Delving Deep into Rectifiers: reproduction report"
    command: str | None = None  # recorded in the report header; None: the command line of this call
