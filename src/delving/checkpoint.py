"""The one checkpoint format: what the trainer saves, resumes from and evaluation reads.

A checkpoint holds the model's weights, the resolved run config, the class folder names the model was
trained on (evaluation refuses another list), the model's test-time contract (its timm pretrained cfg with
the run's input normalisation: what delving-eval and timm's `resolve_data_config` read), and the whole resume
state: `TrainState`, optimizer, scheduler, scaler, every rank's RNG state (of its GPU: its own device's
generator only) and the wandb run id. Its tensors are stored on the CPU. It is written atomically with the
umask's mode and loaded with `weights_only=True` (a file may come from anyone: nothing in it is executed).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delving.errors import UserError
from delving.io import atomic_write
from delving.models import SPPNet, build_model, input_normalization
from delving.run_identity import may_change_on_resume

FORMAT_VERSION = 2
# Model options whose change makes a checkpoint another model (dropout or init do not).
MODEL_IDENTITY_KEYS = ("name", "act", "width", "num_classes", "input_size", "spp_levels")
# Keys added after checkpoints were first written, with the value that computes what those runs did: a
# checkpoint without the key resumes under it (the opt-in knobs are off in every older run).
ADDED_KEYS = {
    "init_from": None,
    "optim.name": "sgd",
    "optim.betas": [0.9, 0.999],
    "optim.eps": 1e-8,
    "sched.warmup_epochs": 0,
    "sched.warmup_unit": "epoch",
    "optim.scale_lr": False,
    "optim.reference_batch_size": 128,
    "data.decode_on_device": False,
    "train.label_smoothing": 0.0,
    "train.clip_grad_norm": 0.0,
    "train.ema_decay": 0.0,
    "train.reproducible": False,
}


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit this model or run; the message says what to do."""


@dataclass
class TrainState:
    """Where training stands: the loop's counters and the best-k list (top-1 error, epoch, file)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: list[dict[str, Any]] = field(default_factory=list)
    # last.pt is saved at the end of an epoch before its validation; a resume runs the validation first.
    val_pending: bool = False
    # The newest validation's errors: a run resumed after its last epoch still reports them.
    last_val: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step, self.best = int(state["global_step"]), list(state["best"])
        self.val_pending = bool(state.get("val_pending", False))
        self.last_val = dict(state.get("last_val", {}))


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    config: dict[str, Any]
    classes: list[str] | None = None
    train_state: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)
    wandb_run_id: str | None = None
    # The model's contract as trained (`Checkpoint.pretrained_cfg_of`); None in checkpoints saved before it.
    pretrained_cfg: dict[str, Any] | None = None
    # train.ema_decay > 0: the EMA of the weights (torch.optim.swa_utils.AveragedModel's state dict). It is
    # what the run validated and what evaluation and init_from= read (`eval_weights`).
    ema: dict[str, torch.Tensor] | None = None
    # data.normalize=mean_image: the (3, H, W) mean image the run subtracted. Evaluation and resume compare
    # the one they would read with it (`check_mean_image`): another one would silently change every input.
    mean_image: torch.Tensor | None = None
    # What decided the arithmetic of the launch that saved it (delving.reproducible.arithmetic()).
    arithmetic: dict[str, Any] = field(default_factory=dict)
    # The copy of the data set it was trained on (data/readers.py describe_copy: kind, root, split, sizes);
    # evaluation may read any copy of the same classes and records both. None in older checkpoints.
    data_copy: dict[str, Any] | None = None

    def save(self, path: str | os.PathLike) -> Path:
        """Every tensor on the CPU, so a plain torch.load reads the file on a machine without a GPU."""
        state = _on_cpu({"format_version": FORMAT_VERSION, **self.__dict__})
        return atomic_write(path, lambda handle: torch.save(state, handle))

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False
    ) -> Checkpoint:
        """The checkpoint at `path`; with `mmap`, its tensors are mapped from the file, not read (a check that
        the file is a whole checkpoint costs its metadata only)."""
        path = _existing_file(path)
        return cls._from_state(path, _torch_load(path, path, map_location, mmap))

    @classmethod
    def load_hashed(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> tuple[Checkpoint, str]:
        """The checkpoint and the sha256 of the bytes it was loaded from: one open file, so a checkpoint
        replaced (renamed over) meanwhile can never be recorded as the one evaluated."""
        path = _existing_file(path)
        with open(path, "rb") as handle:
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            handle.seek(0)
            state = _torch_load(handle, path, map_location)
        return cls._from_state(path, state), digest.hexdigest()

    @classmethod
    def _from_state(cls, path: Path, state: Any) -> Checkpoint:
        if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
            keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"checkpoint {path} needs 'model' and 'config' entries, has {keys}")
        if not isinstance(state["config"], dict) or not isinstance(state["config"].get("model"), dict):
            raise CheckpointError(f"checkpoint {path}: its config has no 'model' section")
        version = state.pop("format_version", None)
        if version == 1:  # the first trainer format: counters at the top level, no class list
            state["train_state"] = {
                k: state.pop(k) for k in ("epoch", "step_in_epoch", "global_step", "best")
            }
            state.pop("world_size", None)
        elif version not in (None, FORMAT_VERSION):
            raise CheckpointError(f"checkpoint {path} has format {version}; this delving reads 1 and 2")
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in state.items() if k in known})

    def eval_weights(self) -> dict[str, torch.Tensor]:
        """The weights to evaluate: the EMA's when the run kept one, else the model's."""
        if not self.ema:
            return self.model
        return {k.removeprefix("module."): v for k, v in self.ema.items() if k.startswith("module.")}

    def build_model(self, where: str | os.PathLike = "checkpoint") -> SPPNet:
        """The net its config describes, with its weights and the contract it was trained with; refuses
        weights of another shape."""
        try:
            model = build_model(self.config["model"])
        except (ValueError, TypeError) as error:
            raise CheckpointError(
                f"{where}: its model config {self.config['model']} is invalid: {error}"
            ) from None
        load_weights(
            model, self.eval_weights(), where, f"the model its config describes ({self.config['model']})"
        )
        # Over the declared cfg, so that fields added to it since keep their defaults.
        if self.pretrained_cfg is not None:
            model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, **self.pretrained_cfg}
        return model

    @staticmethod
    def pretrained_cfg_of(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint stores as the model's contract: its pretrained cfg (timm's fields and delving's),
        with the input the run fed it (data.normalize/mean/std) and the classes it was trained on."""
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        data = config.get("data") or {}
        if "normalize" in data:
            cfg.update(input_normalization(data["normalize"], data["mean"], data.get("std")))
        cfg["num_classes"] = int(getattr(model, "num_classes", cfg.get("num_classes", 0)))
        return cfg


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the file, e.g. {path / 'last.pt'}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _torch_load(source: Any, path: Path, map_location: str | torch.device, mmap: bool = False) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types for truncated, foreign or unsafe files
        if not (mmap and _NOT_MAPPABLE in str(error)):
            raise CheckpointError(
                f"checkpoint {path} is unreadable: corrupt or not a torch checkpoint ({_describe(error)}). "
                "Pass another checkpoint, or delete it to start over."
            ) from None
    return _torch_load(source, path, map_location)  # a legacy (non-zip) file cannot be mapped: read it


# torch.load(mmap=True)'s refusal of a file that is not a zip archive (a legacy torch file, or no torch file).
_NOT_MAPPABLE = "_use_new_zipfile_serialization"


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: Any, what: str) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{where}: its weights do not match {what}: {_describe(error)}") from None


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[SPPNet, Checkpoint, str]:
    """(model in eval mode, the checkpoint without its weights, the sha256 of the bytes it was loaded from)
    for evaluation."""
    checkpoint, sha256 = Checkpoint.load_hashed(path, map_location)
    model = checkpoint.build_model(path)
    checkpoint.model = checkpoint.ema = {}  # the model holds the weights now; do not keep a second copy
    return model.eval(), checkpoint, sha256


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_mean_image(
    checkpoint: Checkpoint, current: torch.Tensor, current_path: str | os.PathLike, where: str | os.PathLike
) -> None:
    """Refuse a mean image other than the one the checkpoint's run subtracted (a recomputed or another data
    set's mean_image.npy): every input would shift, and the scores with it, without a word."""
    trained = checkpoint.mean_image
    if trained is None:  # not a mean-image run, or saved before checkpoints carried it
        return
    current = current.detach().to("cpu", torch.float32)
    if trained.shape == current.shape and torch.equal(trained.to(torch.float32), current):
        return
    difference = (
        f"max difference {(trained.float() - current).abs().max().item():.3g} of 255"
        if trained.shape == current.shape
        else f"shape {tuple(current.shape)} vs {tuple(trained.shape)}"
    )
    raise CheckpointError(
        f"{current_path} is not the mean image {where} was trained with ({difference}): the model would see "
        "other inputs. Give the run's own mean image (data.mean_image=<the file it trained with>), or start a "
        "new run for the new one"
    )


def check_resumable(checkpoint: Checkpoint, config: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint of another model, or any change of what the run computes, naming the keys."""
    saved, current = checkpoint.config, config
    model_diff = [
        f"model.{key}: checkpoint {saved['model'].get(key)!r} vs run {current['model'].get(key)!r}"
        for key in MODEL_IDENTITY_KEYS
        if saved["model"].get(key) != current["model"].get(key)
    ]
    if model_diff:
        raise CheckpointError(
            f"{path} holds another model ({', '.join(model_diff)}). Resume with the same model options, "
            "or start a new run (another run_name=)."
        )
    old, new = _flatten(saved), _flatten(current)
    old = {**{k: v for k, v in ADDED_KEYS.items() if k in new}, **old}
    changed = [
        f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
        and not may_change_on_resume(key)
        and not (key == "train.epochs" and _extends(old, new))
    ]
    if changed:
        cosine = new.get("sched.name") == "cosine" and old.get("train.epochs") != new.get("train.epochs")
        raise CheckpointError(
            f"{path} was trained with another schedule or recipe ({'; '.join(changed)}); resuming would not "
            "reproduce an uninterrupted run. Use the original values, or start a new run (another run_name=)."
            + (
                " sched=cosine draws its curve over train.epochs, so a cosine run cannot be extended."
                if cosine
                else ""
            )
        )


def _extends(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """More epochs for a run whose LR rule does not depend on the total: milestones keep their epochs,
    plateau keeps following the val error, constant stays; cosine's curve is drawn over the total, so no."""
    if new.get("sched.name") == "cosine":
        return False
    return isinstance(old.get("train.epochs"), int) and new.get("train.epochs", 0) > old["train.epochs"]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _describe(error: BaseException) -> str:
    """A library error's first line, without advice to load the file unsafely (it may come from anyone)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if text.isdigit():  # torch's legacy loader names only the wrong magic number it read
        return f"no torch file header ({type(error).__name__} {text})"
    if "weights_only" in str(error) or "allow_pickle" in str(error):
        return "it holds Python objects other than tensors and plain data, which delving never unpickles"
    return text


def _on_cpu(tree: Any) -> Any:
    """`tree` (dicts, lists, tuples) with its tensors copied to the CPU (CPU tensors as they are)."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {key: _on_cpu(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_on_cpu(value) for value in tree)
    return tree


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's generators: Python's, NumPy's, torch's CPU one and the generator of its own GPU (`device`).

    Only the rank's own device: another launch may show the process another number of GPUs (torchrun and the
    submitit launcher all of a node's, one per task elsewhere), and the rank's device then has another index.
    """
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        # weights_only loading takes no NumPy arrays: keep the generator's key as a list of ints.
        "numpy": {
            **numpy_state,
            "state": {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()},
        },
        "torch": torch.get_rng_state(),
        "cuda_device": torch.cuda.get_rng_state(device) if _is_cuda(device) else None,
    }


def _is_cuda(device: torch.device | None) -> bool:
    return device is not None and device.type == "cuda"


def _own_cuda_state(state: dict[str, Any], local_rank: int) -> torch.Tensor | None:
    """The state of the generator the rank drew from. Checkpoints before "cuda_device" hold one state per GPU
    the process saw: the rank drew from cuda:<local rank>, or from the only one."""
    if "cuda_device" in state:
        return state["cuda_device"]
    every_device = state.get("cuda") or []
    if len(every_device) == 1:
        return every_device[0]
    return every_device[local_rank] if local_rank < len(every_device) else None


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None, local_rank: int = 0) -> None:
    """Puts back what `capture_rng_state` took; the GPU state goes to `device`, the rank's own, whatever its index
    (a run on the CPU leaves a saved GPU state unused)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    own = _own_cuda_state(state, local_rank)
    if own is not None and _is_cuda(device):
        torch.cuda.set_rng_state(own, device)


def check_init_weights(path: str | os.PathLike) -> None:
    """Refuses, before any work, an init_from= file that holds no weights (delving's tensors memory-mapped)."""
    read_init_weights(path, mmap=True)


def read_init_weights(path: str | os.PathLike, mmap: bool = False) -> dict[str, torch.Tensor]:
    """init_from='s weights: a delving checkpoint's (its EMA's when it kept one), or a timm checkpoint file's
    (a state dict, or timm's train.py checkpoint: its EMA first; .safetensors too), loaded tensors-only."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"init_from={path} is a folder: give a checkpoint file, e.g. {path / 'last.pt'}"
        )
    if not path.is_file():
        raise CheckpointError(f"init_from={path}: no such file")
    if path.suffix != ".safetensors":
        try:
            raw = _torch_load(path, path, "cpu", mmap)
        except CheckpointError as error:
            raise CheckpointError(f"init_from={error}".replace("=checkpoint ", "=", 1)) from None
        if isinstance(raw, dict) and {"model", "config"} <= raw.keys():
            return Checkpoint.load(path, mmap=mmap).eval_weights()
    from timm.models import load_state_dict

    try:
        weights = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"init_from={path} is unreadable ({_describe(error)})") from None
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"init_from={path} holds no weights (no tensors in its state dict)")
    return tensors


def init_weights_from(model: torch.nn.Module, path: str | os.PathLike) -> str:
    """Loads init_from='s weights into a new run's model; returns what it did, for the log.

    Strict, except the classifier when the checkpoint's class count differs from the model's: the model keeps
    its own classifier, freshly initialized as the paper's fc3 (std 0.001), and everything else must match.
    A mismatch lists the missing, unexpected and misshapen keys.
    """
    weights = read_init_weights(path)
    own = model.state_dict()
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    prefix = f"{head}." if head else None
    their_classes = weights[f"{prefix}weight"].shape[0] if prefix and f"{prefix}weight" in weights else 0
    new_head = prefix is not None and their_classes != getattr(model, "num_classes", their_classes)
    skipped = (lambda key: key.startswith(prefix)) if new_head else (lambda key: False)  # type: ignore[arg-type]
    missing = sorted(k for k in own if k not in weights and not skipped(k))
    unexpected = sorted(k for k in weights if k not in own and not skipped(k))
    misshapen = sorted(
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & weights.keys()
        if not skipped(k) and weights[k].shape != own[k].shape
    )
    if missing or unexpected or misshapen:
        problems = [
            f"{what} ({len(keys)}): {', '.join(keys[:12])}{', ...' if len(keys) > 12 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("another shape", misshapen))
            if keys
        ]
        raise CheckpointError(
            f"init_from={path}: its weights do not fit this model ({'; '.join(problems)}). init_from= needs the "
            "same net (model=, model.act, model.width, model.spp_levels...); only the classifier may differ."
        )
    model.load_state_dict({k: own[k] if skipped(k) else weights[k] for k in own})
    if new_head:
        return (
            f"weights from {path}; classifier {head} re-initialized for {model.num_classes} classes "  # type: ignore[attr-defined]
            f"(the checkpoint has {their_classes})"
        )
    return f"weights from {path} (all {len(own)} tensors)"
