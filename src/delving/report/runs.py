"""What a training run left on disk, read back for the report: config, metrics, results, learned slopes."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from delving.checkpoint import Checkpoint, CheckpointError
from delving.errors import UserError
from delving.evaluation.predictions import load_predictions
from delving.models import build_model
from delving.run_files import (
    FINISHED_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    RunFiles,
    not_from_final_checkpoint,
)
from delving.run_identity import may_change_on_resume, override_in_name

log = logging.getLogger("delving")

# Overrides that change where or how a run ran, not what it computed: never what tells runs apart.
IGNORED_OVERRIDES = (
    "hydra.",
    "resume",
    "start_over",
    "logger.",
    "launcher",
    "train.device",
    "data.num_workers",
)


class RunDirectoryError(UserError, FileNotFoundError):
    """A path in runs= that holds no run, or a run file that cannot be read; the message names it."""


@dataclass
class EvalRecord:
    """One test of one model: a final evaluation or a predictions file."""

    protocol: str
    scales: list[int] | None
    top1_error: float
    top5_error: float
    num_images: int
    source: str  # the file it was read from
    checkpoint_sha256: str | None = None  # of the checkpoint it was made from (None: not recorded)


@dataclass
class SlopeStats:
    """The learned PReLU slopes of one layer (Table 1 / Fig. 4)."""

    layer: str  # the paper's name: conv1, conv2_1, ..., fc1, fc2
    count: int  # 1 for channel-shared
    mean: float
    std: float
    min: float
    max: float


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    slopes: list[SlopeStats] = field(default_factory=list)
    weight_norms: dict[str, float] = field(default_factory=dict)  # ||w|| of every conv/fc weight at the end
    overrides: list[str] = field(default_factory=list)  # the command line's overrides (.hydra/overrides.yaml)
    finished: bool = (
        True  # finished.json is there: the run trained all its epochs and ran its final evaluation
    )
    has_checkpoint: bool = True  # last.pt is there (a run killed before its first save has none)
    checkpoint_sha256: str | None = None  # of last.pt, as read
    epochs_done: int | None = None  # the epochs last.pt holds (None: not read)
    # What tells this run apart from others of the same experiment name (set by label_runs), and the same
    # without its seed: what tells its replicates (runs that differ only in the seed) apart from others.
    tag: str = ""
    setting_tag: str = ""

    @property
    def name(self) -> str:
        return str(self.config.get("experiment_name", self.path.name))

    @property
    def title(self) -> str:
        """The experiment name, with the folder and overrides that tell it apart where several runs share that
        name (a folder named after the experiment, table2_mini-s0, stands for both)."""
        if not self.tag:
            return self.name
        return self.tag if self.tag.startswith(f"{self.name}-") else f"{self.name} [{self.tag}]"

    @property
    def model(self) -> dict[str, Any]:
        return self.config.get("model", {})

    @property
    def label(self) -> str:
        """The title, or the experiment name with the init where a study compares inits."""
        if self.tag:
            return self.title
        return f"{self.name} ({self.model.get('init')})" if self.study.startswith("fig") else self.name

    @property
    def setting_label(self) -> str:
        """The label of this run's replicates together (the seed left out)."""
        if self.setting_tag:
            return f"{self.name} [{self.setting_tag}]"
        return f"{self.name} ({self.model.get('init')})" if self.study.startswith("fig") else self.name

    @property
    def paper(self) -> dict[str, Any]:
        return self.config.get("paper_reference") or {}

    @property
    def study(self) -> str:
        return str(self.paper.get("table") or self.paper.get("figure") or self.name)

    @property
    def num_classes(self) -> int | None:
        """None for a run that never saved a checkpoint and left the count to the data set (config null)."""
        value = self.model.get("num_classes")
        return int(value) if value else None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind]

    @property
    def steps_per_epoch(self) -> float:
        vals = self.of_type("val")
        if vals and vals[0]["step"] > 0:
            return vals[0]["step"] / (vals[0]["epoch"] + 1)
        return math.nan

    @property
    def final_val(self) -> dict[str, Any] | None:
        vals = self.of_type("val")
        return vals[-1] if vals else None


def layer_name(module_name: str) -> str:
    # features.act2_1 -> conv2_1, head.act_fc1 -> fc1: the names of the paper's Table 1.
    leaf = module_name.rsplit(".", 1)[-1]
    return leaf.removeprefix("act_") if leaf.startswith("act_") else "conv" + leaf.removeprefix("act")


def slope_stats(model: nn.Module) -> list[SlopeStats]:
    stats = []
    for name, module in model.named_modules():
        if isinstance(module, nn.PReLU):
            a = module.weight.detach().float()
            std = a.std().item() if a.numel() > 1 else 0.0
            stats.append(
                SlopeStats(layer_name(name), a.numel(), a.mean().item(), std, a.min().item(), a.max().item())
            )
    return stats


def _read_config(path: Path, checkpoint: Checkpoint | None) -> dict[str, Any]:
    if checkpoint is not None:
        return checkpoint.config
    hydra_config = path / ".hydra" / "config.yaml"
    if hydra_config.is_file():
        config = _read_yaml(hydra_config)
        if not isinstance(config, dict):
            raise RunDirectoryError(
                f"{hydra_config}: not a run config (damaged?); restore it, or remove the run"
            )
        return config
    raise RunDirectoryError(
        f"{path}: no last.pt and no .hydra/config.yaml: not a delving-train run directory"
    )


def _read_overrides(path: Path) -> list[str]:
    overrides = path / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return []
    values = _read_yaml(overrides)
    if values is not None and not isinstance(values, list):
        raise RunDirectoryError(
            f"{overrides}: not a list of overrides (damaged?); restore it, or delete it (the run is then labelled "
            "by its config alone)"
        )
    return [str(v) for v in values or []]


def _read_yaml(path: Path) -> Any:
    """A run's YAML file, or RunDirectoryError naming it when it is damaged (cut, binary, not YAML)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        first = " ".join(str(error).split())[:160]
        raise RunDirectoryError(
            f"{path}: damaged, not YAML ({first}); restore it, or delete it if it is .hydra/overrides.yaml"
        ) from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a torn last line (a run killed mid-write) is dropped with a warning."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise RunDirectoryError(f"{path}: line {number} is not JSON; the file is damaged") from None
            log.warning("%s: dropped its torn last line (a run killed while writing it)", path)
    return records


def eval_record_from_predictions(path: Path) -> EvalRecord:
    meta = load_predictions(path).metadata
    checkpoint = meta.get("checkpoint")
    return EvalRecord(
        meta["protocol"],
        meta.get("scales"),
        float(meta["top1_error"]),
        float(meta["top5_error"]),
        int(meta["num_images"]),
        str(path),
        checkpoint.get("sha256") if isinstance(checkpoint, dict) else None,
    )


def not_of_the_final_checkpoint(record: EvalRecord, run: Run) -> str | None:
    """Why `record` is not a result of the run's last.pt as it is now, or None."""
    return not_from_final_checkpoint(
        {"sha256": record.checkpoint_sha256}, run.checkpoint_sha256, RunFiles(run.path).last
    )


def _weights_into(run: Run, checkpoint: Checkpoint, where: Path) -> None:
    """The learned slopes and weight norms of the checkpoint's model (built on the meta device: no copy)."""
    with torch.device("meta"):
        model = build_model(run.model)
    try:
        model.load_state_dict(checkpoint.model, assign=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{where}: its weights do not match its model config ({first})") from None
    run.slopes = slope_stats(model)
    run.weight_norms = {
        name.removesuffix(".weight"): p.detach().float().norm().item()
        for name, p in model.named_parameters()
        if p.ndim > 1
    }


def load_run(path: str | Path) -> Run:
    """Reads config, overrides, metrics.jsonl, predictions-*.npz and the slopes and weight norms of last.pt."""
    path = Path(path)
    last = RunFiles(path).last
    checkpoint, sha256 = Checkpoint.load_hashed(last) if last.is_file() else (None, None)
    run = Run(
        path,
        _read_config(path, checkpoint),
        overrides=_read_overrides(path),
        finished=(path / FINISHED_FILE).is_file(),
        has_checkpoint=checkpoint is not None,
        epochs_done=int(checkpoint.train_state.get("epoch", 0)) if checkpoint is not None else 0,
        checkpoint_sha256=sha256,
    )
    metrics = path / METRICS_FILE
    if metrics.is_file():
        run.records = read_metrics(metrics)
    for file in sorted(path.glob("predictions*.npz")):
        record = eval_record_from_predictions(file)
        why = not_of_the_final_checkpoint(record, run)
        if why is None:
            run.evals.append(record)
        else:  # a mid-training evaluation shown as the run's result would be a silent wrong number
            log.warning("%s left out of the report: %s", file, why)
    if checkpoint is not None:
        _weights_into(run, checkpoint, last)
    return run


def override_items(run: Run) -> dict[str, str]:
    items = {}
    for override in run.overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if not key.startswith(IGNORED_OVERRIDES):
            items[key] = value
    return items


_ABSENT = object()


def _config_node(config: dict[str, Any], key: str) -> Any:
    """The config's value at a dotted key (a dict for a group), or _ABSENT."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def config_value(config: dict[str, Any], key: str) -> str | None:
    node = _config_node(config, key)
    return None if node is _ABSENT else str(node)


def label_runs(runs: list[Run]) -> None:
    """Sets each run's `tag` where runs share an experiment name (ad-hoc runs all read "default"): the run
    folder's name and the few overrides in which it departs from the others (a value the most runs share is
    left out; a run without the override shows its config's value) that the name does not already spell;
    `setting_tag`: those overrides without the seed. Short labels: every run's whole config is in report.json."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.name].append(run)
    for group in (g for g in groups.values() if len(g) > 1):
        items = [{k: v for k, v in override_items(run).items() if _tells_apart(k)} for run in group]
        keys = list(dict.fromkeys(key for run_items in items for key in run_items))
        values = [
            {key: _value_of(run, run_items, key) for key in keys}
            for run, run_items in zip(group, items, strict=True)
        ]
        usual = {key: _most_common([v[key] for v in values]) for key in keys}
        for run, run_values in zip(group, values, strict=True):
            departs = {k: f"{k}={_short_value(v)}" for k, v in run_values.items() if v != usual[k]}
            folder = run.path.name
            unspelled = [text for k, text in departs.items() if not _spelled_in(folder, k, run_values[k])]
            run.tag = _shorten_folder(folder) + (f": {_first(unspelled)}" if unspelled else "")
            run.setting_tag = _first([text for k, text in departs.items() if k != "seed"])


def _most_common(values: list[str]) -> str | None:
    """The value more runs have than any other (None on a tie: then every run shows its own)."""
    counts = Counter(values).most_common(2)
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None


LABEL_OVERRIDES_SHOWN = 3  # a label shows this many differing overrides, then "+N more"


def _tells_apart(key: str) -> bool:
    """Keys of what a run computed: not where or how it was launched (run_name: the folder name says it), but
    the checkpoint it started from and the data it read."""
    return key in ("init_from", "data.root") or not may_change_on_resume(key)


def _spelled_in(folder: str, key: str, value: str | None) -> bool:
    """The folder's name already says key=value (named from its overrides, either spelling)."""
    return value is not None and any(
        spelling in folder for spelling in (f"{key}={value}", override_in_name(f"{key}={value}"))
    )


def _value_of(run: Run, items: dict[str, str], key: str) -> str:
    """The override's value, else the config's; a config group (data=folder) by its name, not its contents."""
    if key in items:
        return items[key]
    node = _config_node(run.config, key)
    if isinstance(node, dict):
        return str(node.get("name", "default"))
    return "–" if node is _ABSENT else str(node)


def _short_value(value: str) -> str:
    """Paths by their last two parts, other long values cut: a label stays one short line."""
    if "/" in value.strip("/"):
        value = "…/" + "/".join(value.rstrip("/").split("/")[-2:])
    return value if len(value) <= 28 else value[:27] + "…"


def _shorten_folder(name: str) -> str:
    """A long folder name keeps its start and its end (where a hashed name's hash is)."""
    return name if len(name) <= 36 else f"{name[:26]}…{name[-9:]}"


def _first(values: list[str]) -> str:
    shown = " ".join(values[:LABEL_OVERRIDES_SHOWN])
    more = len(values) - LABEL_OVERRIDES_SHOWN
    return f"{shown} +{more} more" if more > 0 else shown


def _is_run(path: Path) -> bool:
    """A delving-train run directory: its metrics or checkpoint, or only its Hydra config (a run stopped
    before it wrote either)."""
    return any((path / name).is_file() for name in RUN_MARKERS)


RUN_MARKERS = (METRICS_FILE, LAST_CHECKPOINT, ".hydra/config.yaml")


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories among `paths`: each one itself, or the run directories below it."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if _is_run(entry):
            found.append(entry)
            continue
        below = sorted(
            {p.parent for p in entry.rglob(METRICS_FILE)}
            | {p.parent for p in entry.rglob(LAST_CHECKPOINT)}
            | {p.parent.parent for p in entry.rglob("config.yaml") if p.parent.name == ".hydra"}
        )
        if not below:
            raise RunDirectoryError(
                f"{entry}: no run directory (metrics.jsonl, last.pt or .hydra/config.yaml) in it"
            )
        found.extend(below)
    return found
