"""What delving-eval and delving-ensemble do, behind their thin Hydra entry points in delving.cli."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from delving.data.config import DataConfig
from delving.checkpoint import CheckpointError, load_model
from delving.evaluation.config import EvalConfig
from delving.evaluation.ensemble_report import build_report, render_markdown
from delving.evaluation.evaluator import EvalResult, evaluate
from delving.evaluation.predictions import Predictions, load_predictions, save_predictions
from delving.io import atomic_write_texts

# The input normalisation belongs to the trained model, whichever data set it is now evaluated on.
MODEL_INPUT_FIELDS = ("normalize", "mean", "std")


def data_config_from_dict(values: dict[str, Any]) -> DataConfig:
    """A checkpoint's saved data config as a typed DataConfig; keys this version does not know are dropped."""
    known = {f.name for f in dataclasses.fields(DataConfig)}
    node = OmegaConf.merge(OmegaConf.structured(DataConfig), {k: v for k, v in values.items() if k in known})
    return OmegaConf.to_object(node)  # type: ignore[return-value]


def resolve_data_config(chosen: DictConfig | None, saved: dict[str, Any] | None) -> DataConfig:
    """The chosen data config (data=...) with the checkpoint's input normalisation, or the saved one."""
    if chosen is None and saved is None:
        raise CheckpointError(
            "the checkpoint has no data config: choose the data set with data=... data.root=..."
        )
    if chosen is None:
        return data_config_from_dict(saved)  # type: ignore[arg-type]
    data_cfg: DataConfig = OmegaConf.to_object(chosen)  # type: ignore[assignment]
    if saved is not None:
        trained = data_config_from_dict(saved)
        for name in MODEL_INPUT_FIELDS:
            if getattr(data_cfg, name) != getattr(trained, name):
                print(
                    f"note: data.{name} taken from the checkpoint ({getattr(trained, name)}), as the model was trained"
                )
                setattr(data_cfg, name, getattr(trained, name))
    return data_cfg


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def results_table(result: EvalResult, title: str) -> str:
    meta = result.metadata
    return "\n".join(
        [
            title,
            "",
            "| model | protocol | scales (paper px -> px) | flips | images | top-1 err (%) | top-5 err (%) |",
            "|---|---|---|---|---|---|---|",
            f"| {meta['model']['name']} | {meta['protocol']} | {meta['scales']} -> {meta['scales_px']} | "
            f"{meta['flips']} | {result.num_images} | {result.top1_error:.2f} | {result.top5_error:.2f} |",
        ]
    )


def run_eval(cfg: DictConfig) -> Path | None:
    """Evaluates cfg.checkpoint on every rank (torchrun sets WORLD_SIZE); rank 0 writes and prints."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    started_group = world_size > 1 and not dist.is_initialized()
    if started_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    try:
        model, checkpoint, sha256 = load_model(cfg.checkpoint)
        saved = checkpoint.config
        model.to(device)
        data_cfg = resolve_data_config(cfg.data, saved.get("data"))
        eval_cfg: EvalConfig = OmegaConf.to_object(cfg.eval)  # type: ignore[assignment]
        extra = {
            "checkpoint": {"path": os.path.abspath(cfg.checkpoint), "sha256": sha256},
            "model_config": saved["model"],
            "eval_config": OmegaConf.to_container(cfg.eval, resolve=True, enum_to_str=True),
            "data_config": OmegaConf.to_container(
                OmegaConf.structured(data_cfg), resolve=True, enum_to_str=True
            ),
        }
        result = evaluate(
            model, data_cfg, eval_cfg, cfg.split, rank, world_size, device, extra_metadata=extra
        )
        if rank != 0:
            return None
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output = (
            cfg.output
            or f"outputs/eval/{result.metadata['model']['name']}_{eval_cfg.protocol.value}_{stamp}.npz"
        )
        path = save_predictions(output, result.predictions())
        print(results_table(result, f"checkpoint {cfg.checkpoint} (sha256 {sha256[:12]}), split {cfg.split}"))
        print(f"\npredictions: {path}")
        return path
    finally:
        if started_group:
            dist.destroy_process_group()


def run_ensemble(cfg: DictConfig) -> Path:
    """Loads and checks every file, builds the whole report, and only then writes it."""
    files = [Path(f) for f in cfg.files]
    if not files:
        raise ValueError("files=[...] lists no predictions files")
    names = list(cfg.names) if cfg.names is not None else [f.name.removesuffix(".npz") for f in files]
    if len(names) != len(files):
        raise ValueError(f"{len(names)} names for {len(files)} files")
    preds = [load_predictions(f) for f in files]
    baseline = load_predictions(cfg.baseline) if cfg.baseline else None
    report, probs, rows = build_report(
        preds,
        names,
        weights=list(cfg.weights) if cfg.weights is not None else None,
        select=cfg.select,
        select_fraction=cfg.select_fraction,
        seed=cfg.seed,
        table=cfg.paper_table,
        baseline=baseline,
        baseline_name=Path(cfg.baseline).name if cfg.baseline else "baseline",
        worst_classes=cfg.worst_classes,
    )
    report["files"] = {name: os.path.abspath(f) for name, f in zip(names, files, strict=True)}
    markdown = render_markdown(report)
    out = Path(cfg.output_dir)
    if cfg.save_predictions:
        first = preds[0].metadata
        meta = {
            **{key: first.get(key) for key in ("classes", "class_names", "dataset")},
            "protocol": "ensemble",
            "members": report["files"],
            "weights": report["ensemble"]["weights"],
            "selection": report["selection"],
            "top1_error": (report["selection"] or report["ensemble"])["top1"],
            "top5_error": (report["selection"] or report["ensemble"])["top5"],
        }
        save_predictions(
            out / "ensemble.npz",
            Predictions(preds[0].ids[rows], preds[0].labels[rows], probs.astype(np.float32), meta),
        )
    atomic_write_texts(
        {out / "ensemble.md": markdown, out / "ensemble.json": json.dumps(report, indent=2) + "\n"}
    )
    print(markdown)
    print(f"written: {out / 'ensemble.md'}, {out / 'ensemble.json'}")
    return out
