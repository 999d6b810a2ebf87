"""The one `register_all()` that every entry point calls before composing: every schema in Hydra's
ConfigStore, and the resolvers the configs use (where the files are: config_files.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from delving.data.config import DataConfig
from delving.engine.config import AppConfig, LauncherConfig, LoggerConfig, OptimConfig, SchedConfig
from delving.evaluation.config import EnsembleAppConfig, EvalConfig, EvaluateAppConfig
from delving.models.config import ModelConfig
from delving.paths import PathsConfig
from delving.plan.config import PlanAppConfig
from delving.report.config import InitCheckAppConfig, ReportAppConfig
from delving.run_identity import global_rank, run_name_from_overrides


@dataclass
class VerifyDataAppConfig:
    """delving-verify-data (configs/verify_data.yaml)."""

    data: DataConfig = field(default_factory=DataConfig)
    splits: list[str] | None = None  # None: data.train_split and data.val_split
    processes: int | None = None  # decoding processes; None: data.num_workers (at least 1)


def run_name(given: str | None) -> str:
    """The run directory's name: run_name= when given, else named from the overrides that define the run.

    Every rank of a launch, a relaunch, a requeued or a resubmitted job computes the same name, so the same
    command always finds its run (see engine/run_dir.py).
    """
    if given:
        return str(given)
    from hydra.core.hydra_config import HydraConfig

    return run_name_from_overrides(list(HydraConfig.get().overrides.task))


def main_rank_only(value: str) -> str | None:
    """`value` on global rank 0, None elsewhere: Hydra's .hydra/ folder is then written once."""
    return value if global_rank() == 0 else None


def register_resolvers() -> None:
    """The interpolations the configs use: ${delving_run_name:...} and ${delving_main_rank_only:...}."""
    OmegaConf.register_new_resolver("delving_run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("delving_main_rank_only", main_rank_only, replace=True)


_APP_SCHEMAS = (
    ("base_train", AppConfig),
    ("base_evaluate", EvaluateAppConfig),
    ("base_ensemble", EnsembleAppConfig),
    ("base_report", ReportAppConfig),
    ("base_init_check", InitCheckAppConfig),
    ("base_verify_data", VerifyDataAppConfig),
    ("base_plan", PlanAppConfig),
)
_GROUP_SCHEMAS = (
    ("model", ModelConfig),
    ("data", DataConfig),
    ("optim", OptimConfig),
    ("sched", SchedConfig),
    ("eval", EvalConfig),
    ("logger", LoggerConfig),
    ("launcher", LauncherConfig),
    ("paths", PathsConfig),
)
_filled_store: list[ConfigStore] = []  # the store the schemas went into (a new singleton gets them again)


def _the_store_itself(store: ConfigStore, memo: dict) -> ConfigStore:
    return store


def register_all() -> None:
    """Every schema in Hydra's ConfigStore (each app's base config and each group's base node), and the
    resolvers. Idempotent and cheap again (a test composes hundreds of times); every entry point calls it in
    main(), tests and scripts before composing."""
    store = ConfigStore.instance()
    # Hydra 1.3 deep-copies its config repository at every compose, and `--help` once per group option it
    # lists (116 here); the repository holds the singleton store with every schema, and copying it made
    # `--help` take 5 s. Its loads deep-copy each node they return, so the copies may share the store, as
    # Hydra's main branch does (facebookresearch/hydra#2928, after 1.3.8).
    ConfigStore.__deepcopy__ = _the_store_itself
    if not (_filled_store and _filled_store[0] is store):
        for name, node in _APP_SCHEMAS:
            store.store(name=name, node=node)
        for group, node in _GROUP_SCHEMAS:
            store.store(group=group, name=f"base_{group}", node=node)
        _filled_store[:] = [store]
    register_resolvers()
