"""What a training run left on disk, read back for the report: config, metrics, results, learned slopes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from delving.evaluation.predictions import load_predictions
from delving.models import build_model


@dataclass
class EvalRecord:
    """One test of one model: a final evaluation or a predictions file."""

    protocol: str
    scales: list[int] | None
    top1_error: float
    top5_error: float
    num_images: int
    source: str  # the file it was read from


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

    @property
    def name(self) -> str:
        return str(self.config.get("experiment_name", self.path.name))

    @property
    def model(self) -> dict[str, Any]:
        return self.config.get("model", {})

    @property
    def label(self) -> str:
        """Experiment name, with the init where a study compares inits."""
        study = self.paper.get("study", "")
        return f"{self.name} ({self.model.get('init')})" if str(study).startswith("fig") else self.name

    @property
    def paper(self) -> dict[str, Any]:
        return self.config.get("paper_reference") or {}

    @property
    def study(self) -> str:
        return str(self.paper.get("study") or self.name)

    @property
    def num_classes(self) -> int:
        return int(self.model.get("num_classes", 1000))

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


def _layer_name(module_name: str) -> str:
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
                SlopeStats(_layer_name(name), a.numel(), a.mean().item(), std, a.min().item(), a.max().item())
            )
    return stats


def _read_config(path: Path, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    if checkpoint is not None and "config" in checkpoint:
        return checkpoint["config"]
    hydra_config = path / ".hydra" / "config.yaml"
    if hydra_config.is_file():
        return yaml.safe_load(hydra_config.read_text())
    raise FileNotFoundError(
        f"{path}: no last.pt and no .hydra/config.yaml: not a delving-train run directory"
    )


def eval_record_from_predictions(path: Path) -> EvalRecord:
    meta = load_predictions(path).metadata
    return EvalRecord(
        meta["protocol"],
        meta.get("scales"),
        float(meta["top1_error"]),
        float(meta["top5_error"]),
        int(meta["num_images"]),
        str(path),
    )


def load_run(path: str | Path) -> Run:
    """Reads config, metrics.jsonl, predictions-*.npz and the slopes and weight norms of last.pt."""
    path = Path(path)
    last = path / "last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True) if last.is_file() else None
    run = Run(path, _read_config(path, checkpoint))
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        run.records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    run.evals = [eval_record_from_predictions(p) for p in sorted(path.glob("predictions*.npz"))]
    if checkpoint is not None:
        with torch.device("meta"):
            model = build_model(run.model)
        model.load_state_dict(checkpoint["model"], assign=True)
        run.slopes = slope_stats(model)
        run.weight_norms = {
            name.removesuffix(".weight"): p.detach().float().norm().item()
            for name, p in model.named_parameters()
            if p.ndim > 1
        }
    return run


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories among `paths`: each one itself, or the run directories below it."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if (entry / "metrics.jsonl").is_file() or (entry / "last.pt").is_file():
            found.append(entry)
            continue
        below = sorted({p.parent for p in entry.rglob("metrics.jsonl")})
        if not below:
            raise FileNotFoundError(f"{entry}: no run directory (metrics.jsonl or last.pt) in it")
        found.extend(below)
    return found
