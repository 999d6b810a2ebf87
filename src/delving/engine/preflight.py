"""Every value of a training config checked before any work: a mistake costs a second, not an epoch.

`preflight(cfg, world_size)` runs at the start of the train app, before the net is built, on the typed
config. Each part's own values are its schema's rules (`ModelConfig.check()`, `TrainConfig.check()`, ...,
data/config.validate, evaluation/config.check_eval); here are the rules that span parts or need the world:
the crop is the model's input size, the batch splits over the ranks, the device exists, the run name stays
inside paths.outputs, the data set exists with the classes the model expects and one global batch of
training images, the mean image is there, the resume= / init_from= files are whole checkpoints, the synthetic
set's folder can be written and has room, the final evaluation's largest scale fits the device's memory.
Each refusal is a ConfigError with one line naming the key, its value and what to do. It completes the config
in one place: `model.num_classes: null` becomes the data set's class count. The checks on the data set read
folder names, the file names of the first class folders (up to one global batch) and shard indexes only (no
image, no full listing), and never generate the synthetic set.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from delving.config_files import config_dir
from delving.data.checks import (
    DEMO_HINT,
    check_data_set,
    check_mean_image,
    checked_data_values,
    count_training_images,
)
from delving.data.config import DataConfig, DatasetKind
from delving.data.readers import copy_of
from delving.dist import check_device, pick_device
from delving.engine.config import AppConfig, SchedKind, TrainConfig, as_app_config
from delving.errors import ConfigError, require_at_least
from delving.evaluation.config import check_eval
from delving.run_identity import environment_ranks

__all__ = ["ConfigError", "preflight"]


def preflight(cfg: AppConfig | DictConfig, world_size: int) -> AppConfig:
    """Refuse any value that cannot work, before the net is built; fill in model.num_classes (in `cfg` and in
    the typed config it returns)."""
    _check_data_root_given(cfg.data)  # before typing: a data.root=??? cannot be typed
    typed = as_app_config(cfg)
    require_at_least("seed", typed.seed, 0, "give a seed from 0 to 4294967295")
    for part in (typed.train, typed.logger, typed.optim, typed.sched, typed.model):
        part.check()
    check_eval(typed.eval, typed.model.input_size)
    check_device("train.device", typed.train.device)
    _check_run_name(typed.run_name)
    _check_batch_split(typed.train, world_size)
    sched, epochs = typed.sched, typed.train.epochs
    if sched.name is SchedKind.cosine and sched.warmup_epochs >= epochs:
        raise ConfigError(
            f"sched=cosine with sched.warmup_epochs={sched.warmup_epochs} and train.epochs={epochs}: the "
            "cosine needs epochs after the warm-up; lower sched.warmup_epochs or raise train.epochs"
        )
    data, model = checked_data_values(typed.data), typed.model
    if data.crop_size != model.input_size:
        raise ConfigError(
            f"data.crop_size={data.crop_size} and model.input_size={model.input_size} differ, but they are one "
            "size (the training crop; its last feature map is the window of the dense test): add "
            f"data.crop_size={model.input_size} or model.input_size={data.crop_size} (data.scale_min, "
            "data.scale_max and data.test_scale stay at least the crop)"
        )
    classes, train_images = check_data_set(data)
    cfg.model.num_classes = typed.model.num_classes = _class_count(typed, classes)
    if train_images is None and classes is not None:  # a folder data set: counted up to one global batch
        train_images = count_training_images(data, classes, typed.train.batch_size)
    if train_images is not None and train_images < typed.train.batch_size:
        where = f"data={data.name.value}" + (f" (data.root={data.root})" if data.root else "")
        raise ConfigError(
            f"train.batch_size={typed.train.batch_size} is more than the {train_images} training images of "
            f"{where}: lower train.batch_size (one epoch needs one full global batch)"
        )
    check_mean_image(data)
    _check_start(typed.resume, typed.init_from)
    if typed.train.final_eval:
        from delving.evaluation.memory import check_eval_memory  # the net's code: once the cheap checks pass

        device = pick_device(typed.train.device, environment_ranks()[2])
        check_eval_memory(typed.eval, typed.model, typed.model.input_size, device, later=True)
    return typed


def _check_data_root_given(data: DataConfig | DictConfig) -> None:
    missing = isinstance(data, DictConfig) and OmegaConf.is_missing(data, "root")
    if data.name == DatasetKind.synthetic or not (missing or data.root is None):
        return
    kind = data.name.value
    where = "ILSVRC-2012 in the folder layout" if kind == "imagenet" else "the data set"
    raise ConfigError(
        f"data.root is not set: data={kind} reads {where}; give data.root=/path/to/the/folder (holding "
        f"{copy_of(data).layout}), "
        f"{DEMO_HINT}"
    )


def _check_batch_split(train: TrainConfig, world_size: int) -> None:
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


def _class_count(cfg: AppConfig, classes: list[str] | None) -> int:
    """The data set's class count, which a set model.num_classes must equal."""
    data = cfg.data
    found = len(classes) if classes is not None else data.synthetic_classes
    given = cfg.model.num_classes
    if given is not None and given != found:
        where = f"data={data.name.value}" + (f" (data.root={data.root})" if data.root else "")
        source = _num_classes_source(cfg)
        fix = (
            f"set model.num_classes={found}, or leave it out to take the data set's count"
            if source == "the command line"
            else f"add model.num_classes={found} (or model.num_classes=null: the data set's count)"
        )
        raise ConfigError(
            f"model.num_classes={given} (set by {source}) but {where} has {found} classes: {fix}"
        )
    return found


def _num_classes_source(cfg: AppConfig) -> str:
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
    return f"model={keys.get('model', cfg.model.name.value)}"


def _check_run_name(run_name: str | None) -> None:
    """The run folder is <paths.outputs>/<experiment_name>/<run_name>: a name may make subfolders there, but
    never leave it (an absolute path or ../ would write the run elsewhere)."""
    if run_name is None:
        return
    inside = os.path.normpath(run_name)
    if not run_name.strip() or os.path.isabs(inside) or inside == "." or inside.split(os.sep)[0] == "..":
        raise ConfigError(
            f"run_name={run_name!r}: a run name is a folder inside paths.outputs/<experiment_name>, without "
            "'..' or a leading '/': give a plain name (e.g. run_name=a1), or choose the place with "
            "paths.outputs= or hydra.run.dir="
        )


def _check_start(resume: str | None, init_from: str | None) -> None:
    """resume= and init_from= files readable as what they must be (tensors memory-mapped, not read)."""
    given = resume not in (None, "", "null", "auto")
    if not (given or init_from):
        return
    from delving.checkpoint import Checkpoint, CheckpointError, check_init_weights

    if given and init_from:
        raise ConfigError(
            f"resume={resume} and init_from={init_from}: resume= continues a run (its weights, optimizer and "
            "schedule), init_from= starts a new one from weights; give one of them"
        )
    try:
        if given:
            if not Path(resume).expanduser().exists():  # type: ignore[arg-type]
                raise ConfigError(
                    f"resume={resume}: no such checkpoint; give a last.pt path, resume=auto or resume=null"
                )
            Checkpoint.load(Path(resume).expanduser(), mmap=True)  # type: ignore[arg-type]
        if init_from:
            check_init_weights(Path(init_from).expanduser())
    except CheckpointError as error:
        key = f"resume={resume}" if given else f"init_from={init_from}"
        message = str(error)
        raise ConfigError(message if message.startswith(key) else f"{key}: {message}") from None
