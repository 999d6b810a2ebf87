"""What delving-eval and delving-ensemble do, behind their thin Hydra entry points in delving.cli, and the
final evaluation that delving-train runs after its last epoch.

Both evaluations write predictions files with the same metadata keys: `checkpoint` {path, sha256},
`model_config`, `eval_config` and `data_config` (the typed configs as plain JSON), besides what `evaluate`
records; the train app's file also holds the whole run config under `train_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError
from torch import nn

from delving.checkpoint import Checkpoint, CheckpointError, check_mean_image, file_sha256, load_model
from delving.data.config import DataConfig, Normalize, as_data_config
from delving.data.normalize import load_mean_image, mean_image_path
from delving.dist import (
    DistributedContext,
    check_device,
    fail_together,
    init_distributed,
    shutdown_distributed,
)
from delving.errors import ConfigError, UserError
from delving.evaluation.config import EvalConfig, EvaluateAppConfig, Protocol, check_eval
from delving.evaluation.ensemble import check_weights, member_names
from delving.evaluation.ensemble_report import EnsembleOptions, EnsembleReport, build_ensemble_report
from delving.evaluation.evaluator import EvalResult, evaluate
from delving.evaluation.memory import check_eval_memory
from delving.evaluation.predictions import Predictions, load_predictions, predictions_writer, save_predictions
from delving.io import atomic_write_files, check_output_folder, utf8, write_probe
from delving.progress import Progress, format_duration
from delving.reproducible import arithmetic, pin
from delving.run_files import LAST_CHECKPOINT, RunFiles, not_from_final_checkpoint

log = logging.getLogger("delving")

# The input normalisation belongs to the trained model, whichever data set it is now evaluated on.
MODEL_INPUT_FIELDS = ("normalize", "mean", "std")


class EvalOutputError(UserError):
    """An output= that cannot be written: a folder, or a place without write permission."""


# DataConfig keys that change how images are loaded, never which or what they are: no other output name.
LOADING_ONLY_FIELDS = ("num_workers", "prefetch_factor", "use_draft", "max_bad_fraction")


def data_config_from_dict(values: dict[str, Any], changes: dict[str, Any] | None = None) -> DataConfig:
    """A checkpoint's saved data config as a typed DataConfig; keys this version does not know are dropped.
    `changes` (data.KEY=VALUE without data=) are set over it, each a key of DataConfig of its type."""
    known = [f.name for f in dataclasses.fields(DataConfig)]
    node = OmegaConf.merge(OmegaConf.structured(DataConfig), {k: v for k, v in values.items() if k in known})
    for key, value in (changes or {}).items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean data.{close[0]}?" if close else "delving-eval --cfg job lists the keys"
            raise ConfigError(f"data.{key} is not a key of the data config: {hint}")
        try:
            node[key] = value
        except ValidationError as error:
            first = str(error).strip().splitlines()[0]
            raise ConfigError(f"data.{key}={value}: {first}") from None
    return OmegaConf.to_object(node)  # type: ignore[return-value]


def trained_input(checkpoint: Checkpoint) -> dict[str, Any] | None:
    """The input the model was trained on, as data config values: from the model's contract (normalize, mean,
    and std when it divides by it), or, in a checkpoint saved before it had one, from its saved data config."""
    contract = checkpoint.pretrained_cfg or {}
    if "normalize" in contract:
        values = {"normalize": Normalize(contract["normalize"]), "mean": list(contract["pixel_mean"])}
        if contract.get("pixel_std") is not None:
            values["std"] = list(contract["pixel_std"])
        return values
    saved = checkpoint.config.get("data")
    if saved is None:
        return None
    trained = data_config_from_dict(saved)
    return {name: getattr(trained, name) for name in MODEL_INPUT_FIELDS}


def evaluation_data_config(
    chosen: DataConfig | None, checkpoint: Checkpoint, changes: dict[str, Any] | None = None
) -> tuple[DataConfig, list[str]]:
    """(the chosen data config (data=...), or the checkpoint's saved one with `changes` (data.KEY=VALUE given
    without data=) set over it, with the input the model was trained on; notes for the user about what was
    taken from the checkpoint)."""
    saved = checkpoint.config.get("data")
    if chosen is None and saved is None:
        given = " ".join(f"data.{k}={v}" for k, v in (changes or {}).items()) or "data.root=..."
        raise CheckpointError(
            f"the checkpoint has no data config: choose the data set with data=... {given} (data=folder, "
            "imagenet, shards or synthetic)"
        )
    data_cfg = data_config_from_dict(saved, changes) if chosen is None else chosen  # type: ignore[arg-type]
    notes = []
    for name, value in (trained_input(checkpoint) or {}).items():
        if getattr(data_cfg, name) != value:
            shown = value.value if isinstance(value, Normalize) else value
            notes.append(f"note: data.{name} taken from the checkpoint ({shown}), as the model was trained")
            setattr(data_cfg, name, value)
    return data_cfg, notes  # type: ignore[return-value]


def config_dict(config: Any) -> dict[str, Any]:
    """A typed config (dataclass or DictConfig) as plain JSON values, enums as their names."""
    node = config if isinstance(config, DictConfig) else OmegaConf.structured(config)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def provenance(
    checkpoint: Path,
    sha256: str | None,
    model_config: dict[str, Any],
    eval_cfg: EvalConfig,
    data_cfg: DataConfig,
) -> dict[str, Any]:
    """The metadata keys that say where a predictions file came from (the same for delving-eval and train)."""
    return {
        "checkpoint": {"path": os.path.abspath(checkpoint), "sha256": sha256},
        "model_config": model_config,
        "eval_config": config_dict(eval_cfg),
        "data_config": config_dict(data_cfg),
        "arithmetic": arithmetic(),
    }


def results_table(result: EvalResult, title: str) -> str:
    meta = result.metadata
    images = f"{result.num_images}"
    if result.skipped_images:
        images += f" (+{result.skipped_images} unreadable, skipped)"
    return "\n".join(
        [
            title,
            "",
            "| model | protocol | scales (paper px -> px) | flips | images | top-1 err (%) | top-5 err (%) |",
            "|---|---|---|---|---|---|---|",
            f"| {meta['model']['name']} | {meta['protocol']} | {meta['scales']} -> {meta['scales_px']} | "
            f"{meta['flips']} | {images} | {result.top1_error:.2f} | {result.top5_error:.2f} |",
        ]
    )


# ---------------------------------------------------------------- delving-eval


def resolve_checkpoint(value: str | os.PathLike) -> Path:
    """checkpoint= as a file: a checkpoint file, or a run directory's last.pt."""
    path = Path(value).expanduser()
    if path.is_dir():
        last = RunFiles(path).last
        if not last.is_file():
            raise CheckpointError(
                f"checkpoint={path} is a folder without a {last.name}: pass a run directory or a file"
            )
        return last
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def default_output(
    checkpoint: Path,
    eval_cfg: EvalConfig,
    split: str,
    data_chosen: DataConfig | DictConfig | None,
    data_changes: dict[str, Any] | None = None,
) -> Path:
    """Next to the checkpoint: predictions-<protocol>-s<scales>[-noflip][-<split>][-first<N>][-<data>][-<ckpt>].npz.

    The scales are always in the name, so it never is the trainer's own `predictions-<protocol>.npz`, and
    delving-report, which reads every predictions*.npz of a run directory, finds it.
    """
    parts = [
        f"predictions-{Protocol(eval_cfg.protocol).value}",
        "s" + "_".join(str(s) for s in eval_cfg.scales),
    ]
    if not eval_cfg.flips:
        parts.append("noflip")
    if split != "val":
        parts.append(split)
    if eval_cfg.limit is not None:
        parts.append(f"first{eval_cfg.limit}")
    if data_chosen is not None:
        parts.append(as_data_config(data_chosen).name.value)
    changed = {k: v for k, v in (data_changes or {}).items() if k not in LOADING_ONLY_FIELDS}
    if changed:  # another data set (data.root=) or input: never the name of the checkpoint's own data's file
        parts.append("data" + hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8])
    if checkpoint.stem != "last":
        parts.append(checkpoint.stem)
    return checkpoint.parent / ("-".join(parts) + ".npz")


def check_output(path: Path) -> Path:
    """Refuses, before any work, an output that is a folder or that this user cannot create."""
    if path.is_dir():
        raise EvalOutputError(
            f"output={path} is a folder: give a file name, e.g. output={path / 'predictions.npz'}"
        )
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EvalOutputError(f"output={path}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EvalOutputError(f"output={path}: no permission to write in {existing}; choose another output=")
    why = write_probe(existing)  # as the file will be written at the end: /proc, read-only and full disks
    if why is not None:
        raise EvalOutputError(f"output={path}: cannot write in {existing} ({why}); choose another output=")
    return path


def run_eval(config: EvaluateAppConfig | DictConfig) -> Path | None:
    """Evaluates cfg.checkpoint on every rank (torchrun or srun); rank 0 writes the file and prints."""
    started = time.monotonic()
    cfg: EvaluateAppConfig = OmegaConf.to_object(config) if isinstance(config, DictConfig) else config  # type: ignore[assignment]
    check_device("device", cfg.device)
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    eval_cfg = cfg.eval
    output = check_output(
        Path(cfg.output)
        if cfg.output
        else default_output(checkpoint, eval_cfg, cfg.split, cfg.data, cfg.data_changes)
    )
    group_was_up = dist.is_available() and dist.is_initialized()
    ctx = init_distributed(cfg.device, cfg.dist_timeout_s)
    try:
        path = _eval_checkpoint(cfg, checkpoint, eval_cfg, output, ctx)
        if ctx.is_main:
            print(f"\npredictions: {path}\ntotal time: {format_duration(time.monotonic() - started)}")
        return path
    finally:
        if not group_was_up:
            shutdown_distributed()


def trained_reproducibly(checkpoint: Path) -> bool:
    """The run's train.reproducible, read without a tensor operation (memory-mapped, tensors unread)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    config = state.get("config") if isinstance(state, dict) else None
    train = config.get("train") if isinstance(config, dict) else None
    return isinstance(train, dict) and train.get("reproducible") is True


def _eval_checkpoint(
    cfg: EvaluateAppConfig, checkpoint: Path, eval_cfg: EvalConfig, output: Path, ctx: DistributedContext
) -> Path | None:
    if trained_reproducibly(checkpoint):
        pin()  # the evaluation of a train.reproducible run computes as it did, before building the model
    model, saved, sha256 = load_model(checkpoint)
    check_eval(eval_cfg, model.input_size)  # before any image: the scales need the model's input size
    check_eval_memory(eval_cfg, saved.config["model"], model.input_size, ctx.device)
    model.to(ctx.device)
    data_cfg, notes = evaluation_data_config(cfg.data, saved, cfg.data_changes)
    if data_cfg.normalize == Normalize.mean_image:  # before any image: another mean image changes every input
        check_mean_image(saved, load_mean_image(data_cfg), mean_image_path(data_cfg), checkpoint)
    if ctx.is_main:
        for note in notes:
            print(note)
        if saved.classes is None:
            print(
                f"warning: {checkpoint} records no class list (saved by an older delving): the data set's class "
                "folders are taken to be the ones the model was trained on",
                file=sys.stderr,
            )
    extra = {**provenance(checkpoint, sha256, saved.config["model"], eval_cfg, data_cfg),
             "trained_on": saved.data_copy}  # fmt: skip
    result = evaluate(model, data_cfg, eval_cfg, cfg.split, ctx, classes=saved.classes, extra_metadata=extra)
    if not ctx.is_main:
        return None
    if output.exists():
        print(f"note: replacing {output}", file=sys.stderr)
    path = save_predictions(output, result.predictions())
    print(results_table(result, f"checkpoint {checkpoint} (sha256 {sha256[:12]}), split {cfg.split}"))
    return path


# ---------------------------------------------------------------- delving-train's final evaluation


def final_evaluation(
    model: nn.Module,
    config: dict[str, Any],
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    run_dir: RunFiles | Path,
    ctx: DistributedContext,
    checkpoint: Path,
    classes: list[str] | None,
) -> dict[str, Any]:
    """The run's `eval` protocol on the val split, after training; every rank calls it.

    Rank 0 hashes `checkpoint`, writes run_dir/predictions-<protocol>.npz (delving-eval's metadata keys,
    plus the run config as `train_config`) and logs the results table. Its loader workers (eval.num_workers)
    are ended before it returns, also on an error. Returns the same summary on every rank.
    """
    sha256 = file_sha256(checkpoint) if ctx.is_main and Path(checkpoint).is_file() else None
    extra = {
        **provenance(Path(checkpoint), sha256, config["model"], eval_cfg, data_cfg),
        "train_config": config,
    }
    result = evaluate(model, data_cfg, eval_cfg, "val", ctx, classes=classes, extra_metadata=extra)
    protocol = Protocol(eval_cfg.protocol).value
    path, error = None, None
    if ctx.is_main:
        try:
            path = save_predictions(RunFiles.of(run_dir).predictions(protocol), result.predictions())
            log.info("%s\npredictions: %s", results_table(result, f"final evaluation of {checkpoint}"), path)
        except Exception as exc:  # e.g. a full disk: every rank stops with it
            error = exc
    fail_together(ctx, error)
    return {
        "top1_error": result.top1_error,
        "top5_error": result.top5_error,
        "num_images": result.num_images,
        "skipped_images": result.skipped_images,
        "protocol": protocol,
        "predictions": None if path is None else str(path),
    }


# ---------------------------------------------------------------- delving-ensemble


def run_ensemble(cfg: DictConfig) -> Path:
    """Checks the options, loads and checks every file, builds the whole report, and only then writes it."""
    started = time.monotonic()
    files = [Path(f) for f in cfg.files]
    if not files:
        raise UserError("files=[...] lists no predictions files")
    check_output_folder(cfg.output_dir, "output_dir")
    names = list(cfg.names) if cfg.names is not None else member_names(files)
    if len(names) != len(files):
        raise UserError(f"{len(names)} names for {len(files)} files")
    weights = list(cfg.weights) if cfg.weights is not None else None
    check_weights(weights, len(files))  # before reading any file
    with Progress(len(files) + bool(cfg.baseline), "ensemble: reading predictions", unit="files") as progress:
        preds = []
        for file in files:
            preds.append(load_predictions(file))
            progress.update()
        baseline = load_predictions(cfg.baseline) if cfg.baseline else None
        progress.update(bool(cfg.baseline))
    options = EnsembleOptions(
        weights, cfg.select, cfg.select_fraction, cfg.seed, cfg.paper_table, cfg.worst_classes
    )
    baseline_name = Path(cfg.baseline).name if cfg.baseline else "baseline"
    report = build_ensemble_report(preds, names, options, baseline, baseline_name)
    report.files = {name: os.path.abspath(f) for name, f in zip(names, files, strict=True)}
    for entry, pred in zip(report.models, preds, strict=True):
        entry["checkpoint_note"] = _not_of_a_finished_run(pred)
        if entry["checkpoint_note"]:
            print(f"warning: {entry['name']} was {entry['checkpoint_note']}", file=sys.stderr)
    _write_ensemble(report, preds[0], Path(cfg.output_dir), cfg.save_predictions)
    print(f"total time: {format_duration(time.monotonic() - started)}")
    return Path(cfg.output_dir)


def _not_of_a_finished_run(pred: Predictions) -> str | None:
    """Why a member made from a run's last.pt is not of the run's final last.pt (finished.json), or None."""
    checkpoint = pred.metadata.get("checkpoint")
    path = Path(checkpoint.get("path") or "") if isinstance(checkpoint, dict) else None
    if path is None or path.name != LAST_CHECKPOINT:
        return None
    return not_from_final_checkpoint(checkpoint, RunFiles(path.parent).final_checkpoint_sha256(), path)


def _write_ensemble(report: EnsembleReport, first: Predictions, out: Path, with_predictions: bool) -> None:
    """ensemble.md, ensemble.json (and ensemble.npz) all or nothing: a full disk changes none of them."""
    markdown = report.to_markdown()
    files = {
        out / "ensemble.md": lambda handle: handle.write(utf8(markdown)),
        out / "ensemble.json": lambda handle: handle.write(
            utf8(json.dumps(report.to_json(), indent=2) + "\n")
        ),
    }
    if with_predictions:
        meta = {
            **{key: first.metadata.get(key) for key in ("classes", "class_names", "dataset")},
            "protocol": "ensemble",
            "members": report.files,
            "weights": report.ensemble["weights"],
            "selection": report.selection,
            "top1_error": report.best["top1"],
            "top5_error": report.best["top5"],
        }
        rows = report.rows
        probs = report.probs.astype(np.float32)
        npz = out / "ensemble.npz"
        files[npz] = predictions_writer(npz, Predictions(first.ids[rows], first.labels[rows], probs, meta))
    atomic_write_files(files)
    print(utf8(markdown).decode("utf-8"))  # a terminal may refuse a non-UTF-8 class folder's name
    print(f"written: {', '.join(str(path) for path in files)}")
