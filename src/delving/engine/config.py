"""The training app's config schema. Hydra validates every composed config against it before any work:
a wrong key fails with the key's name, a wrong enum value with the allowed values. What a type cannot refuse,
each part's `check()` does, in one line naming the key (delving-train's preflight calls them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

from delving.data.config import DataConfig
from delving.errors import ConfigError, require_at_least
from delving.evaluation.config import EvalConfig
from delving.models.config import ModelConfig
from delving.paths import PathsConfig


class OptimKind(str, Enum):
    sgd = "sgd"  # SGD with momentum (momentum_form: Caffe's, the paper's, or PyTorch's)
    adamw = "adamw"  # torch.optim.AdamW on the same param groups (decoupled decay on weights only)


class MomentumForm(str, Enum):
    caffe = "caffe"  # V <- mu V + lr (g + wd w); w <- w - V: the paper's solver (paper.md Sec. 7)
    pytorch = "pytorch"  # b <- mu b + (g + wd w); w <- w - lr b: torch.optim.SGD


@dataclass
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on conv/fc weights only; never on biases or PReLU slopes
    # The paper is silent on biases (Caffe's recipes usually exempt them); true: decay them too (never slopes).
    bias_decay: bool = False
    momentum_form: MomentumForm = MomentumForm.caffe
    name: OptimKind = OptimKind.sgd  # adamw: an opt-in modern recipe (configs/optim/adamw.yaml)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw only
    eps: float = 1e-8  # adamw only
    # Large batches (Goyal et al. 2017): true trains at lr * train.batch_size / reference_batch_size (lr stays
    # the LR of the reference batch); pair it with sched.warmup_unit=step. false: lr as given (the paper).
    scale_lr: bool = False
    reference_batch_size: int = 128  # the batch `lr` was tuned for (the paper's 128)

    def check(self) -> None:
        if not 0 < self.lr < math.inf:
            raise ConfigError(
                f"optim.lr={self.lr}: the learning rate must be positive and finite (the paper's: 0.01)"
            )
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum={self.momentum}: give a value in [0, 1) (the paper's: 0.9)")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"optim.weight_decay={self.weight_decay}: give 0 or more (the paper's: 0.0005)")
        require_at_least(
            "optim.reference_batch_size", self.reference_batch_size, 1,
            "give the batch optim.lr was tuned for (the paper's: 128)",
        )  # fmt: skip


class WarmupUnit(str, Enum):
    epoch = "epoch"  # the LR changes at epoch ends only (a mid-epoch resume needs no step count)
    step = "step"  # a linear ramp over every step of the warm-up epochs (Goyal et al.'s gradual warm-up)


class SchedKind(str, Enum):
    plateau = "plateau"  # divide by `factor` when val top-1 error stops improving (the paper's rule)
    milestones = "milestones"  # divide by `factor` at fixed epochs
    constant = "constant"
    cosine = "cosine"  # half a cosine from lr (after the warm-up) to min_lr over the run's epochs


@dataclass
class SchedConfig:
    name: SchedKind = SchedKind.plateau
    factor: float = 0.1
    min_lr: float = 1e-4  # 1e-2 -> 1e-3 -> 1e-4 and no lower
    # plateau: epochs without a `threshold` relative improvement before a drop. 5 and 0.1 % relative: a
    # steady 0.1-point-per-epoch gain (49 % -> 41 %) never triggers it (tests/test_engine_schedule.py).
    patience: int = 5
    threshold: float = 0.001
    milestones: list[int] = field(default_factory=list)
    # Linear warm-up, per epoch: epoch e < warmup_epochs trains at lr * (e + 1) / (warmup_epochs + 1), then
    # the schedule starts (milestones, constant, cosine; plateau refuses a warm-up). 0: none (the paper).
    warmup_epochs: int = 0
    # step: the warm-up rises every step, from lr / k (k = the optim.scale_lr factor, so the reference batch's
    # LR) or from ~0 without scaling, to the full LR at the end of warmup_epochs (engine/optim.py:warmup_factor).
    warmup_unit: WarmupUnit = WarmupUnit.epoch

    def check(self) -> None:
        require_at_least("sched.warmup_epochs", self.warmup_epochs, 0, "give 0 (no warm-up) or more epochs")
        if self.name is SchedKind.plateau and self.warmup_epochs:
            raise ConfigError(
                f"sched.warmup_epochs={self.warmup_epochs} with sched=plateau: the plateau rule takes no warm-up; "
                "use sched=milestones, constant or cosine, or sched.warmup_epochs=0"
            )
        if self.warmup_unit is WarmupUnit.step and not self.warmup_epochs:
            raise ConfigError(
                "sched.warmup_unit=step with sched.warmup_epochs=0: give the warm-up's length, e.g. "
                "sched.warmup_epochs=5 (Goyal et al.), or leave warmup_unit out"
            )
        if not 0 < self.factor <= 1:
            raise ConfigError(
                f"sched.factor={self.factor}: the LR is multiplied by it at a drop; give a value in (0, 1]"
            )
        if self.min_lr < 0 or self.patience < 0 or self.threshold < 0:
            raise ConfigError(
                f"sched.min_lr={self.min_lr}, sched.patience={self.patience}, sched.threshold={self.threshold}: "
                "none may be negative"
            )
        milestones = list(self.milestones)
        if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
            raise ConfigError(
                f"sched.milestones={milestones}: give increasing epochs of 1 or more, e.g. [30,60]"
            )


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline  # never needs an account or a network
    project: str = "delving"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    # mode=online: how long wandb may try to reach its server before the run logs offline instead.
    init_timeout_s: float = 15.0


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log_every_steps: int = 20
    # When stderr is not a terminal: a plain progress line at least this often (besides every log_every_steps).
    log_every_seconds: float = 60.0
    progress_bar: bool = True  # rank 0 only, and quiet when stderr is not a terminal

    def check(self) -> None:
        require_at_least("logger.log_every_steps", self.log_every_steps, 1, "log every 1 step or more")


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast; no loss scaling needed
    fp16 = "fp16"  # autocast + GradScaler


@dataclass
class DDPConfig:
    """DistributedDataParallel's own knobs: how gradients travel, never what they are (a resume may change them)."""

    bucket_cap_mb: float = 25.0  # PyTorch's default; larger buckets: fewer all-reduce calls, later overlap
    gradient_as_bucket_view: bool = False  # true: .grad are views of the buckets (saves a copy and memory)
    static_graph: bool = False  # true: the same parameters get gradients every step (true of every net here)

    def check(self) -> None:
        if not self.bucket_cap_mb > 0:
            raise ConfigError(
                f"train.ddp.bucket_cap_mb={self.bucket_cap_mb}: give a bucket size in MB above 0 (PyTorch's: 25)"
            )


@dataclass
class TrainConfig:
    epochs: int = 80
    batch_size: int = 128  # global: split over ranks (and accumulation steps)
    grad_accum_steps: int = 1
    precision: Precision = Precision.fp32
    channels_last: bool = False
    compile: bool = False  # torch.compile, applied before DDP
    # The same numbers on any x86-64 CPU of the last decade: the kernels' instruction set (AVX2), the intra-op
    # threads (1) and deterministic algorithms pinned (delving/reproducible.py). On for the demo and the minis;
    # off for the paper's GPU runs (it costs speed there).
    reproducible: bool = False
    cudnn_benchmark: bool = True
    # float32 convolutions and matmuls on CUDA (precision=fp32, and whatever autocast leaves in fp32) in TF32
    # (Ampere and later: 10-bit mantissa on tensor cores) or, with false, IEEE fp32 everywhere (slower). torch's
    # own default mixes them (TF32 convs, IEEE matmuls); delving sets both (delving/numerics.py). No effect on CPUs.
    tf32: bool = True
    device: str = "auto"  # auto: cuda:<local rank> when CUDA is available, else cpu
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch (last.pt)
    keep_best: int = 3  # best-k checkpoints by val top-1 error
    val_every_epochs: int = 1
    val_max_images: int | None = None  # e.g. 3000 for Figs. 2-3's error curves; None: the whole split
    final_eval: bool = True  # run the `eval` protocol on the val split after the last epoch
    dist_timeout_s: int = 1800
    ddp: DDPConfig = field(default_factory=DDPConfig)
    # On SIGUSR1 (SLURM's pre-timeout --signal) under a SLURM batch job, `scontrol requeue` it after saving.
    requeue_on_usr1: bool = True
    # Opt-in modern knobs, all off by default (the paper's recipe): see docs/training.md "Fine-tuning, extending and
    # opt-in knobs". Each computes the run, so a resume refuses a change of any of them.
    label_smoothing: float = 0.0  # F.cross_entropy(label_smoothing=); 0: none
    clip_grad_norm: float = 0.0  # clip the global gradient norm to this (after unscaling under fp16); 0: off
    ema_decay: float = 0.0  # keep an EMA of the weights (validated, evaluated, checkpointed); 0: off

    def check(self) -> None:
        """The values alone; whether train.batch_size splits over the ranks is preflight's (it knows them)."""
        for key, minimum, what in (
            ("epochs", 1, "train for at least one epoch (train.epochs=1 or more)"),
            ("grad_accum_steps", 1, "use 1 (no accumulation) or more"),
            ("val_every_epochs", 1, "validate every 1 epoch or more"),
            ("keep_best", 0, "keep 0 best checkpoints (none) or more"),
            ("checkpoint_every_steps", 0, "use 0 (each epoch's end) or more"),
            ("dist_timeout_s", 1, "give the process group a timeout of 1 s or more"),
        ):
            require_at_least(f"train.{key}", getattr(self, key), minimum, what)
        if self.val_max_images is not None:
            require_at_least(
                "train.val_max_images", self.val_max_images, 1, "validate on 1 image or more, or null (all)"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"train.label_smoothing={self.label_smoothing}: give a value in [0, 1) (0: off)"
            )
        if self.clip_grad_norm < 0:
            raise ConfigError(f"train.clip_grad_norm={self.clip_grad_norm}: give a norm above 0, or 0 (off)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(
                f"train.ema_decay={self.ema_decay}: give a decay in (0, 1), e.g. 0.9999, or 0 (off)"
            )
        if self.ddp.static_graph and self.grad_accum_steps > 1:
            # PyTorch's reducer asserts on the first no_sync backward under static_graph, and once past it stops
            # all-reducing (pytorch/pytorch issues 143580, PR 187732): refused until PyTorch fixes it.
            raise ConfigError(
                f"train.ddp.static_graph=true with train.grad_accum_steps={self.grad_accum_steps}: PyTorch's DDP "
                "breaks on no_sync under a static graph; use train.ddp.static_graph=false or train.grad_accum_steps=1"
            )
        self.ddp.check()


@dataclass
class LauncherConfig:
    name: str = "local"


@dataclass
class AppConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment_name: str = "default"
    # {table, row} or {figure}: what this run reproduces, resolved through evaluation/paper_results.py
    paper_reference: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    resume: str | None = None  # auto: the run directory's last.pt; or a checkpoint path
    # A new run starts from these weights (a delving checkpoint or a timm checkpoint file); the classifier is
    # re-initialized when its class count differs. Once the run has its own last.pt, resume=auto wins.
    init_from: str | None = None
    # Names the run directory (<paths.outputs>/<experiment_name>/<run_name>); None: named from the overrides.
    run_name: str | None = None
    # With resume=null in a run directory that holds a run: move its files to previous/<time>/ and start anew.
    start_over: bool = False


def as_app_config(cfg: AppConfig | DictConfig) -> AppConfig:
    """The typed config of a composed one (interpolations resolved, enums as enums): the entry points and the
    Trainer call it once, and everything below them reads an AppConfig."""
    if isinstance(cfg, AppConfig):
        return cfg
    if OmegaConf.get_type(cfg) is not AppConfig:  # e.g. Hydra's whole config with its `hydra` node masked out
        cfg = OmegaConf.merge(OmegaConf.structured(AppConfig), cfg)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]
