"""Every value of a training config checked before any work: a mistake costs a second, not an epoch.

`preflight(cfg, world_size)` runs at the start of the train app, before the net is built. It raises
ConfigError with one line naming the key, its value and what to do, and completes the config in one
place: `model.num_classes: null` becomes the data set's class count. The checks on the data set read
folder names and shard indexes only (no image, no full listing), and never generate the synthetic set.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from delving.config import config_dir
from delving.data.config import DataConfig, DatasetKind, validate
from delving.data.datasets import check_same_classes
from delving.data.shards import index_path, open_shards
from delving.data.synthetic import CACHE_ENV, COMPLETE_MARKER, MAX_CLASSES, SyntheticParams, default_root
from delving.engine.run_dir import unwritable_place
from delving.errors import ConfigError, UserError
from delving.evaluation.config import check_eval
from delving.models.sppnet import NET_SPECS

__all__ = ["ConfigError", "preflight"]

DEMO_HINT = "or try delving-train experiment=demo (a small net on generated synthetic data, minutes on a CPU)"


def preflight(cfg: DictConfig, world_size: int) -> None:
    """Refuse any value that cannot work, before the net is built; fill in model.num_classes."""
    _check_data_root_given(cfg.data)
    _check_train(cfg, world_size)
    _check_knobs(cfg)
    _check_optim(cfg)
    _check_model(cfg)
    _check_eval(cfg)
    data = _data_config(cfg.data)
    if data.crop_size != cfg.model.input_size:
        raise ConfigError(
            f"data.crop_size={data.crop_size} and model.input_size={cfg.model.input_size} differ, but they are one "
            "size (the training crop; its last feature map is the window of the dense test): add "
            f"data.crop_size={cfg.model.input_size} or model.input_size={data.crop_size} (data.scale_min, "
            "data.scale_max and data.test_scale stay at least the crop)"
        )
    classes, train_images = _data_set(data)
    _complete_num_classes(cfg, data, classes)
    if train_images is not None and train_images < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is more than the {train_images} training images of "
            f"data={data.name.value}: lower train.batch_size (one epoch needs one full global batch)"
        )
    _check_resume(cfg)


def _at_least(key: str, value: Any, minimum: int, what: str) -> None:
    if value < minimum:
        raise ConfigError(f"{key}={value}: {what}")


def _check_data_root_given(data: DictConfig) -> None:
    if data.name == DatasetKind.synthetic or (
        not OmegaConf.is_missing(data, "root") and data.root is not None
    ):
        return
    kind = data.name.value
    where = "ILSVRC-2012 in the folder layout" if kind == "imagenet" else "the data set"
    layout = "<split>.json and <split>-NNNNNN.tar shards" if kind == "shards" else "train/ and val/"
    raise ConfigError(
        f"data.root is not set: data={kind} reads {where}; give data.root=/path/to/the/folder (holding {layout}), "
        f"{DEMO_HINT}"
    )


def _check_knobs(cfg: DictConfig) -> None:
    """The opt-in knobs, here rather than once the net and the loaders are built."""
    train, sched = cfg.train, cfg.sched
    if not 0 <= train.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing={train.label_smoothing}: give a value in [0, 1) (0: off)")
    if train.clip_grad_norm < 0:
        raise ConfigError(f"train.clip_grad_norm={train.clip_grad_norm}: give a norm above 0, or 0 (off)")
    if not 0 <= train.ema_decay < 1:
        raise ConfigError(
            f"train.ema_decay={train.ema_decay}: give a decay in (0, 1), e.g. 0.9999, or 0 (off)"
        )
    _at_least("sched.warmup_epochs", sched.warmup_epochs, 0, "give 0 (no warm-up) or more epochs")
    if sched.name == "plateau" and sched.warmup_epochs:
        raise ConfigError(
            f"sched.warmup_epochs={sched.warmup_epochs} with sched=plateau: the plateau rule takes no warm-up; "
            "use sched=milestones, constant or cosine, or sched.warmup_epochs=0"
        )
    if sched.warmup_unit == "step" and not sched.warmup_epochs:
        raise ConfigError(
            "sched.warmup_unit=step with sched.warmup_epochs=0: give the warm-up's length, e.g. "
            "sched.warmup_epochs=5 (Goyal et al.), or leave warmup_unit out"
        )
    _at_least(
        "optim.reference_batch_size", cfg.optim.reference_batch_size, 1,
        "give the batch optim.lr was tuned for (the paper's: 128)",
    )  # fmt: skip
    if train.ddp.static_graph and train.grad_accum_steps > 1:
        # PyTorch's reducer asserts on the first no_sync backward under static_graph, and once past it stops
        # all-reducing (pytorch/pytorch issues 143580, PR 187732): refused until PyTorch fixes it.
        raise ConfigError(
            f"train.ddp.static_graph=true with train.grad_accum_steps={train.grad_accum_steps}: PyTorch's DDP "
            "breaks on no_sync under a static graph; use train.ddp.static_graph=false or train.grad_accum_steps=1"
        )
    if not train.ddp.bucket_cap_mb > 0:
        raise ConfigError(
            f"train.ddp.bucket_cap_mb={train.ddp.bucket_cap_mb}: give a bucket size in MB above 0 (PyTorch's: 25)"
        )
    if sched.name == "cosine" and sched.warmup_epochs >= train.epochs:
        raise ConfigError(
            f"sched=cosine with sched.warmup_epochs={sched.warmup_epochs} and train.epochs={train.epochs}: the "
            "cosine needs epochs after the warm-up; lower sched.warmup_epochs or raise train.epochs"
        )


def _check_train(cfg: DictConfig, world_size: int) -> None:
    train, logger = cfg.train, cfg.logger
    _at_least("seed", cfg.seed, 0, "give a seed from 0 to 4294967295")
    _at_least("train.epochs", train.epochs, 1, "train for at least one epoch (train.epochs=1 or more)")
    _at_least("train.grad_accum_steps", train.grad_accum_steps, 1, "use 1 (no accumulation) or more")
    _at_least("train.val_every_epochs", train.val_every_epochs, 1, "validate every 1 epoch or more")
    _at_least("logger.log_every_steps", logger.log_every_steps, 1, "log every 1 step or more")
    _at_least("train.keep_best", train.keep_best, 0, "keep 0 best checkpoints (none) or more")
    _at_least(
        "train.checkpoint_every_steps", train.checkpoint_every_steps, 0, "use 0 (each epoch's end) or more"
    )
    _at_least(
        "train.dist_timeout_s", train.dist_timeout_s, 1, "give the process group a timeout of 1 s or more"
    )
    if train.val_max_images is not None:
        _at_least(
            "train.val_max_images", train.val_max_images, 1, "validate on 1 image or more, or null (all)"
        )
    split = world_size * train.grad_accum_steps
    hint = f"a multiple of {split} ({world_size} rank(s) x train.grad_accum_steps={train.grad_accum_steps})"
    if train.batch_size < 1:
        multiple = f", {hint}" if split > 1 else ""
        raise ConfigError(
            f"train.batch_size={train.batch_size}: give the global batch size, 1 or more{multiple} "
            "(the paper's: 128)"
        )
    if train.batch_size % split:
        lower, upper = train.batch_size // split * split, (train.batch_size // split + 1) * split
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(
            f"train.batch_size={train.batch_size} (global) does not split evenly: give {hint}, e.g. {nearest}"
        )


def _check_optim(cfg: DictConfig) -> None:
    optim, sched = cfg.optim, cfg.sched
    if not 0 < optim.lr < math.inf:
        raise ConfigError(
            f"optim.lr={optim.lr}: the learning rate must be positive and finite (the paper's: 0.01)"
        )
    if not 0 <= optim.momentum < 1:
        raise ConfigError(f"optim.momentum={optim.momentum}: give a value in [0, 1) (the paper's: 0.9)")
    if not 0 <= optim.weight_decay < math.inf:
        raise ConfigError(f"optim.weight_decay={optim.weight_decay}: give 0 or more (the paper's: 0.0005)")
    if not 0 < sched.factor <= 1:
        raise ConfigError(
            f"sched.factor={sched.factor}: the LR is multiplied by it at a drop; give a value in (0, 1]"
        )
    if sched.min_lr < 0 or sched.patience < 0 or sched.threshold < 0:
        raise ConfigError(
            f"sched.min_lr={sched.min_lr}, sched.patience={sched.patience}, sched.threshold={sched.threshold}: "
            "none may be negative"
        )
    milestones = list(sched.milestones)
    if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(f"sched.milestones={milestones}: give increasing epochs of 1 or more, e.g. [30,60]")


def _check_model(cfg: DictConfig) -> None:
    model = cfg.model
    if not model.width > 0:
        raise ConfigError(
            f"model.width={model.width}: the width multiplier must be positive (1.0: the paper's)"
        )
    if not 0 <= model.dropout < 1:
        raise ConfigError(f"model.dropout={model.dropout}: give a probability in [0, 1)")
    if model.fc_init_std is not None and len(model.fc_init_std) != 3:
        raise ConfigError(f"model.fc_init_std={list(model.fc_init_std)}: give 3 stds (fc1, fc2, fc3) or null")
    if model.num_classes is not None:
        _at_least(
            "model.num_classes", model.num_classes, 1, "leave it out (the data set's count) or give 1 or more"
        )
    try:
        NET_SPECS[model.name.value].map_size(model.input_size, model.spp_levels)
    except ValueError as error:
        raise ConfigError(f"model={model.name.value} model.input_size={model.input_size}: {error}") from None


def _check_eval(cfg: DictConfig) -> None:
    check_eval(cfg.eval, cfg.model.input_size)


def _data_config(node: DictConfig) -> DataConfig:
    data: DataConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
    try:
        validate(data)
    except UserError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _at_least("data.num_workers", data.num_workers, 0, "give 0 (load in the main process) or more")
    _at_least("data.prefetch_factor", data.prefetch_factor, 1, "give 1 or more")
    if data.name == DatasetKind.synthetic:
        if not 1 <= data.synthetic_classes <= MAX_CLASSES:
            raise ConfigError(
                f"data.synthetic_classes={data.synthetic_classes}: give a count in [1, {MAX_CLASSES}]"
            )
        for key in ("synthetic_train_per_class", "synthetic_val_per_class", "synthetic_min_size"):
            _at_least(f"data.{key}", getattr(data, key), 1, "give 1 or more")
        if data.synthetic_max_size < data.synthetic_min_size:
            raise ConfigError(
                f"data.synthetic_max_size={data.synthetic_max_size} is below data.synthetic_min_size="
                f"{data.synthetic_min_size}: give max >= min"
            )
    return data


def _existing_folder(path: Path, key: str, what: str) -> None:
    if path.is_file():
        raise ConfigError(f"{key}={path} is a file, not a folder: point {key}= at {what}")
    if not path.is_dir():
        raise ConfigError(f"{key}={path}: no such folder; point {key}= at {what}, {DEMO_HINT}")


def _data_set(data: DataConfig) -> tuple[list[str] | None, int | None]:
    """The class list (None for the synthetic set: only its count is known before it is generated) and the
    number of training images where it is known without listing every file."""
    if data.name == DatasetKind.synthetic:
        if data.root is not None and Path(data.root).expanduser().is_file():
            raise ConfigError(
                f"data.root={data.root} is a file, not a folder: point it at a folder, or leave it out"
            )
        _check_synthetic_place(data)
        return None, data.synthetic_classes * data.synthetic_train_per_class
    root = Path(data.root).expanduser()  # type: ignore[arg-type]
    kind = data.name.value
    if data.name == DatasetKind.shards:
        _existing_folder(root, "data.root", "the folder of the shards (<split>.json, <split>-NNNNNN.tar)")
        train, count = _shard_index(root, data.train_split, "data.train_split")
        val, _ = _shard_index(root, data.val_split, "data.val_split")
        if train != val:
            raise ConfigError(
                f"data.root={root}: the shards of {data.train_split} and {data.val_split} list different classes "
                f"({len(train)} vs {len(val)}): write both splits' shards from one data set"
            )
        return train, count
    _existing_folder(root, "data.root", f"the folder that holds {data.train_split}/ and {data.val_split}/")
    for key, split in (("data.train_split", data.train_split), ("data.val_split", data.val_split)):
        folder = root / split
        if folder.is_file():
            raise ConfigError(f"{key}={split}: {folder} is a file, not a folder of class folders")
        if not folder.is_dir():
            raise ConfigError(
                f"data={kind} data.root={root} has no {split}/ folder ({key}={split}): expected "
                f"{folder}/<class>/<images>; check data.root"
            )
    try:
        return check_same_classes(root, data.train_split, data.val_split), None
    except UserError:
        raise
    except (OSError, ValueError) as error:
        raise ConfigError(f"data.root={root}: {error}") from None


def _shard_index(root: Path, split: str, key: str) -> tuple[list[str], int]:
    path = index_path(root, split)
    if not path.is_file():
        raise ConfigError(
            f"data.root={root} has no shard index {path.name} ({key}={split}): write the shards with "
            "scripts/make_shards.py, or check data.root"
        )
    try:
        reader = open_shards(root, split)  # parsed once per process: the loaders reuse it
        return [str(c) for c in reader.classes], len(reader)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{path}: not a shard index of scripts/make_shards.py ({error!r}); rewrite the shards"
        ) from None


def _check_synthetic_place(data: DataConfig) -> None:
    """The synthetic set is generated on first use: its folder (DELVING_DATA_CACHE) must take it."""
    params = SyntheticParams.from_config(data)
    root = Path(data.root).expanduser() if data.root else default_root(params)
    if (root / COMPLETE_MARKER).is_file():
        return  # generated already: only read
    why = unwritable_place(root.parent)
    if why is None:
        return
    cache = os.environ.get(CACHE_ENV)
    fix = (
        "point data.root= at a folder you can write" if data.root
        else f"set {CACHE_ENV} (now {cache or 'unset'}) to a folder you can write"
    )  # fmt: skip
    raise ConfigError(f"data=synthetic is generated on first use into {root}, but {why}: {fix}")


def _complete_num_classes(cfg: DictConfig, data: DataConfig, classes: list[str] | None) -> None:
    found = len(classes) if classes is not None else data.synthetic_classes
    where = f"data={data.name.value}" + (f" (data.root={data.root})" if data.root else "")
    given = cfg.model.num_classes
    if given is None:
        with open_dict(cfg):
            cfg.model.num_classes = found
    elif given != found:
        source = _num_classes_source(cfg)
        fix = (
            f"set model.num_classes={found}, or leave it out to take the data set's count"
            if source == "the command line"
            else f"add model.num_classes={found} (or model.num_classes=null: the data set's count)"
        )
        raise ConfigError(
            f"model.num_classes={given} (set by {source}) but {where} has {found} classes: {fix}"
        )


def _num_classes_source(cfg: DictConfig) -> str:
    """Where model.num_classes came from: the command line, the experiment file, or the model group."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keys = {o.lstrip("+~").split("=", 1)[0]: o.split("=", 1)[-1] for o in overrides}
    if "model.num_classes" in keys:
        return "the command line"
    experiment = keys.get("experiment")
    if experiment:
        path = config_dir() / "experiment" / f"{experiment}.yaml"
        model = OmegaConf.load(path).get("model") if path.is_file() else None
        if isinstance(model, DictConfig) and "num_classes" in model:
            return f"experiment={experiment}"
        return f"experiment={experiment} (its recipe or model=)"
    return f"model={keys.get('model', cfg.model.name)}"


def _check_resume(cfg: DictConfig) -> None:
    resume = cfg.resume
    if resume in (None, "", "null", "auto"):
        return
    if not Path(resume).expanduser().exists():
        raise ConfigError(
            f"resume={resume}: no such checkpoint; give a last.pt path, resume=auto or resume=null"
        )
