"""Every value of a training config checked before any work: a mistake costs a second, not an epoch.

`preflight(cfg, world_size)` runs at the start of the train app, before the net is built, on the typed
config. Each part's own values are its schema's rules (`ModelConfig.check()`, `TrainConfig.check()`, ...,
data/config.validate, evaluation/config.check_eval); here are the rules that span parts or need the world:
the crop is the model's input size, the batch splits over the ranks, the data set exists with the classes
the model expects, the resume checkpoint exists, the synthetic set's folder can be written. Each refusal is
a ConfigError with one line naming the key, its value and what to do. It completes the config in one place:
`model.num_classes: null` becomes the data set's class count. The checks on the data set read folder names
and shard indexes only (no image, no full listing), and never generate the synthetic set.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from delving.config import config_dir
from delving.data.config import DataConfig, DatasetKind, validate
from delving.data.datasets import check_same_classes
from delving.data.shards import index_path, open_shards
from delving.data.synthetic import CACHE_ENV, COMPLETE_MARKER, MAX_CLASSES, SyntheticParams, default_root
from delving.engine.config import AppConfig, SchedKind, TrainConfig, as_app_config
from delving.engine.run_dir import unwritable_place
from delving.errors import ConfigError, UserError, require_at_least
from delving.evaluation.config import check_eval

__all__ = ["ConfigError", "preflight"]

DEMO_HINT = "or try delving-train experiment=demo (a small net on generated synthetic data, minutes on a CPU)"


def preflight(cfg: AppConfig | DictConfig, world_size: int) -> AppConfig:
    """Refuse any value that cannot work, before the net is built; fill in model.num_classes (in `cfg` and in
    the typed config it returns)."""
    _check_data_root_given(cfg.data)  # before typing: a data.root=??? cannot be typed
    typed = as_app_config(cfg)
    require_at_least("seed", typed.seed, 0, "give a seed from 0 to 4294967295")
    for part in (typed.train, typed.logger, typed.optim, typed.sched, typed.model):
        part.check()
    check_eval(typed.eval, typed.model.input_size)
    _check_batch_split(typed.train, world_size)
    sched, epochs = typed.sched, typed.train.epochs
    if sched.name is SchedKind.cosine and sched.warmup_epochs >= epochs:
        raise ConfigError(
            f"sched=cosine with sched.warmup_epochs={sched.warmup_epochs} and train.epochs={epochs}: the "
            "cosine needs epochs after the warm-up; lower sched.warmup_epochs or raise train.epochs"
        )
    data, model = _checked_data(typed.data), typed.model
    if data.crop_size != model.input_size:
        raise ConfigError(
            f"data.crop_size={data.crop_size} and model.input_size={model.input_size} differ, but they are one "
            "size (the training crop; its last feature map is the window of the dense test): add "
            f"data.crop_size={model.input_size} or model.input_size={data.crop_size} (data.scale_min, "
            "data.scale_max and data.test_scale stay at least the crop)"
        )
    classes, train_images = _data_set(data)
    cfg.model.num_classes = typed.model.num_classes = _class_count(typed, classes)
    if train_images is not None and train_images < typed.train.batch_size:
        raise ConfigError(
            f"train.batch_size={typed.train.batch_size} is more than the {train_images} training images of "
            f"data={data.name.value}: lower train.batch_size (one epoch needs one full global batch)"
        )
    _check_resume(typed.resume)
    return typed


def _check_data_root_given(data: DataConfig | DictConfig) -> None:
    missing = isinstance(data, DictConfig) and OmegaConf.is_missing(data, "root")
    if data.name == DatasetKind.synthetic or not (missing or data.root is None):
        return
    kind = data.name.value
    where = "ILSVRC-2012 in the folder layout" if kind == "imagenet" else "the data set"
    layout = "<split>.json and <split>-NNNNNN.tar shards" if kind == "shards" else "train/ and val/"
    raise ConfigError(
        f"data.root is not set: data={kind} reads {where}; give data.root=/path/to/the/folder (holding {layout}), "
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


def _checked_data(data: DataConfig) -> DataConfig:
    """data/config.validate, and the data values it leaves to the train app (the loader's, the synthetic set's)."""
    try:
        validate(data)
    except UserError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None
    require_at_least("data.num_workers", data.num_workers, 0, "give 0 (load in the main process) or more")
    require_at_least("data.prefetch_factor", data.prefetch_factor, 1, "give 1 or more")
    if data.name == DatasetKind.synthetic:
        if not 1 <= data.synthetic_classes <= MAX_CLASSES:
            raise ConfigError(
                f"data.synthetic_classes={data.synthetic_classes}: give a count in [1, {MAX_CLASSES}]"
            )
        for key in ("synthetic_train_per_class", "synthetic_val_per_class", "synthetic_min_size"):
            require_at_least(f"data.{key}", getattr(data, key), 1, "give 1 or more")
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


def _check_resume(resume: str | None) -> None:
    if resume in (None, "", "null", "auto"):
        return
    if not Path(resume).expanduser().exists():
        raise ConfigError(
            f"resume={resume}: no such checkpoint; give a last.pt path, resume=auto or resume=null"
        )
