"""The Trainer: DDP training of any registered net with exact resume, metrics and checkpoints.

It knows the model only as an nn.Module (plus the param-group helper) and the data only through
TrainLoader/EvalLoader; every rank runs the same steps and the same collectives.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from delving.data.loaders import EvalLoader, TrainLoader
from delving.engine.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_torch_save,
    capture_rng_state,
    check_resumable,
    load_checkpoint,
    restore_rng_state,
)
from delving.engine.config import Precision
from delving.dist import (
    DistributedContext,
    all_reduce,
    barrier,
    gather_to_main,
    init_distributed,
)
from delving.engine.logging import MetricsLog, log, progress_bar, setup_console_logging
from delving.engine.optim import EpochScheduler, build_optimizer
from delving.models import build_model

# Fault injection for the resume tests: SIGKILL this process right after this global step.
KILL_AT_STEP_ENV = "DELVING_KILL_AT_STEP"


class NonFiniteLossError(RuntimeError):
    pass


def config_to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.config = config_to_dict(cfg)
        self.run_dir = Path(run_dir)
        self.ctx: DistributedContext = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
        setup_console_logging(self.run_dir, self.ctx.is_main)
        train = cfg.train
        per_rank, remainder = divmod(train.batch_size, self.ctx.world_size * train.grad_accum_steps)
        if remainder or per_rank == 0:
            raise ValueError(
                f"train.batch_size={train.batch_size} (global) does not split evenly over {self.ctx.world_size} "
                f"rank(s) x {train.grad_accum_steps} accumulation step(s); pick a multiple of "
                f"{self.ctx.world_size * train.grad_accum_steps}."
            )
        self.device = self.ctx.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = train.cudnn_benchmark

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = build_model(cfg.model).to(self.device)
        if train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = EpochScheduler(self.optimizer, cfg.sched)
        self.precision = Precision(train.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision is Precision.fp16)
        self.train_loader = TrainLoader(
            cfg.data,
            batch_size=per_rank * train.grad_accum_steps,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            seed=cfg.seed,
            pin_memory=self.device.type == "cuda",
        )
        if self.train_loader.num_classes != cfg.model.num_classes:
            raise ValueError(
                f"the data set has {self.train_loader.num_classes} classes but model.num_classes="
                f"{cfg.model.num_classes}; set model.num_classes={self.train_loader.num_classes}"
            )
        self.val_loader = EvalLoader(
            cfg.data,
            cfg.data.val_split,
            batch_size=per_rank,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            max_samples=train.val_max_images,
        )
        self.net: nn.Module = torch.compile(self.model) if train.compile else self.model
        if self.ctx.is_distributed:
            self.net = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best: list[dict[str, Any]] = []
        wandb_run_id = self._maybe_resume()
        # Dropout draws from each rank's own stream (restored exactly on resume).
        if not self._resumed:
            torch.manual_seed(cfg.seed * 1_000_003 + self.ctx.rank)
        self.metrics = (
            MetricsLog(self.run_dir, cfg.logger, self.config, wandb_run_id) if self.ctx.is_main else None
        )
        if self.metrics is not None and self._resumed:
            self.metrics.truncate_after(self.global_step)

    # ---------------------------------------------------------------- resume
    def _resume_path(self) -> Path | None:
        resume = self.cfg.resume
        if resume in (None, "", "null"):
            return None
        if resume == "auto":
            last = self.run_dir / "last.pt"
            if not last.exists():
                log.info("resume=auto: no %s yet, starting a new run", last)
                return None
            return last
        return Path(resume)

    def _maybe_resume(self) -> str | None:
        self._resumed = False
        path = self._resume_path()
        if path is None:
            return None
        state = load_checkpoint(path)
        check_resumable(state, self.config, path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: its weights do not fit this model: {error}") from error
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = (
            state["epoch"],
            state["step_in_epoch"],
            state["global_step"],
        )
        self.best = list(state["best"])
        rng_states = state["rng"]
        if len(rng_states) == self.ctx.world_size:
            restore_rng_state(rng_states[self.ctx.rank])
        else:
            log.warning(
                "checkpoint has RNG states of %d ranks, this run has %d: dropout draws will differ from an "
                "uninterrupted run (the data order does not).",
                len(rng_states),
                self.ctx.world_size,
            )
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.ctx.rank + self.global_step)
        self._resumed = True
        log.info(
            "resumed from %s at epoch %d, step %d (global step %d)",
            path,
            self.epoch,
            self.step_in_epoch,
            self.global_step,
        )
        return state.get("wandb_run_id")

    def _save(self, name: str) -> Path | None:
        """Collective: gathers every rank's RNG state; rank 0 writes run_dir/name atomically."""
        rng_states = gather_to_main(capture_rng_state(), self.ctx)
        path = self.run_dir / name
        if self.ctx.is_main:
            atomic_torch_save(
                {
                    "format_version": FORMAT_VERSION,
                    "model": self.model.state_dict(),
                    "config": self.config,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "epoch": self.epoch,
                    "step_in_epoch": self.step_in_epoch,
                    "global_step": self.global_step,
                    "rng": rng_states,
                    "best": self.best,
                    "wandb_run_id": self.metrics.wandb_run_id if self.metrics else None,
                    "world_size": self.ctx.world_size,
                },
                path,
            )
        barrier(self.ctx)
        return path if self.ctx.is_main else None

    def _rank_best(self, top1_error: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """This epoch's best-k entry and the entries it pushes out; self.best is updated before last.pt is saved."""
        entry = {
            "top1_error": top1_error,
            "epoch": self.epoch - 1,
            "file": f"best-epoch{self.epoch - 1:03d}.pt",
        }
        ranked = sorted([*self.best, entry], key=lambda e: (e["top1_error"], e["epoch"]))
        self.best = ranked[: self.cfg.train.keep_best]
        return entry, ranked[self.cfg.train.keep_best :]

    def _link_best(self, last: Path, entry: dict[str, Any], dropped: list[dict[str, Any]]) -> None:
        """Best-k checkpoints are hard links to last.pt (no second write of the state); rank 0 only."""
        if entry in self.best:
            target = self.run_dir / entry["file"]
            target.unlink(missing_ok=True)
            try:
                os.link(last, target)
            except OSError:
                shutil.copyfile(last, target)
        for old in dropped:
            (self.run_dir / old["file"]).unlink(missing_ok=True)

    # ---------------------------------------------------------------- steps
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision is Precision.fp32:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision is Precision.bf16 else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, want_grad_norms: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        accum = self.cfg.train.grad_accum_steps
        total = torch.zeros((), device=self.device)
        for index, (x, y) in enumerate(zip(images.chunk(accum), labels.chunk(accum), strict=True)):
            sync = index == accum - 1 or not isinstance(self.net, DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.net.no_sync(), self._autocast():
                loss = F.cross_entropy(self.net(x), y) / accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        grad_norms = self._grad_norms() if want_grad_norms else {}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norms

    def _grad_norms(self) -> dict[str, float]:
        # After backward: DDP has averaged the gradients, so every rank sees the same values.
        norms = {
            f"grad_norm/{name.removesuffix('.weight')}": p.grad.detach().float().norm()
            for name, p in self.model.named_parameters()
            if p.grad is not None and p.ndim > 1
        }
        return _to_floats(norms)

    def _prelu_slopes(self) -> dict[str, float]:
        return _to_floats(
            {
                f"prelu_slope/{name}": module.weight.detach().float().mean()
                for name, module in self.model.named_modules()
                if isinstance(module, nn.PReLU)
            }
        )

    def _check_losses(self, losses: list[torch.Tensor], first_step: int) -> float:
        """Mean loss over all ranks of the steps since the last check; stops every rank on NaN/Inf.

        The losses stay on the device between checks (no sync per step); every rank calls this at the
        same steps, so the two collectives match.
        """
        stacked = torch.stack(losses).double().cpu() if losses else torch.zeros(0, dtype=torch.float64)
        bad = (~torch.isfinite(stacked)).nonzero().flatten()
        local_first_bad = first_step + int(bad[0]) if len(bad) else math.inf
        first_bad = -all_reduce(torch.tensor([-local_first_bad], dtype=torch.float64), "max").item()
        if math.isfinite(first_bad):
            raise NonFiniteLossError(
                f"the loss became NaN or Inf at global step {int(first_bad)} (epoch {self.epoch}). The run "
                f"stopped; {self.run_dir / 'last.pt'} still holds the last good state. Lower optim.lr, check "
                "the data (delving-verify-data) or the init, then resume=auto."
            )
        total = all_reduce(torch.tensor([stacked.sum().item(), len(losses)], dtype=torch.float64), "sum")
        return total[0].item() / max(total[1].item(), 1.0)

    # ---------------------------------------------------------------- loops
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Center-crop top-1/top-5 error on the val split; each image counted once over all ranks."""
        self.model.eval()
        counts = torch.zeros(4, dtype=torch.float64)  # top-1 hits, top-5 hits, images, unreadable images
        for images, labels in self.val_loader:
            with self._autocast():
                logits = self.model(images.to(self.device, non_blocking=True)).float().cpu()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            counts[:3] += torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), len(labels)])
        counts[3] = self.val_loader.skipped
        top1_hits, top5_hits, seen, skipped = all_reduce(counts, "sum").tolist()
        if int(seen + skipped) != self.val_loader.num_samples:
            raise RuntimeError(
                f"validation counted {int(seen + skipped)} images, the split has {self.val_loader.num_samples}"
            )
        self.model.train()
        return {
            "val_top1_error": 100 * (1 - top1_hits / seen),
            "val_top5_error": 100 * (1 - top5_hits / seen),
        }

    def train_epoch(self, max_steps: int | None = None) -> None:
        """Trains the rest of the current epoch (from `step_in_epoch`), logging and checkpointing on the way."""
        cfg = self.cfg
        steps = self.train_loader.steps_per_epoch
        kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0"))
        log_every, ckpt_every = cfg.logger.log_every_steps, cfg.train.checkpoint_every_steps
        show = cfg.logger.progress_bar and self.ctx.is_main
        bar = progress_bar(steps, self.step_in_epoch, show, f"epoch {self.epoch}")
        pending: list[torch.Tensor] = []
        window_start, window_step = time.perf_counter(), self.global_step
        for done, (images, labels) in enumerate(self.train_loader.epoch(self.epoch, self.step_in_epoch), 1):
            log_now = (self.global_step + 1) % log_every == 0
            loss, grad_norms = self.train_step(images, labels, want_grad_norms=log_now)
            pending.append(loss)
            self.global_step += 1
            self.step_in_epoch += 1
            bar.update(1)
            checkpoint_now = (
                ckpt_every > 0 and self.global_step % ckpt_every == 0 and self.step_in_epoch < steps
            )
            if log_now or checkpoint_now:
                mean_loss = self._check_losses(pending, self.global_step - len(pending) + 1)
                elapsed = time.perf_counter() - window_start
                images_per_s = (self.global_step - window_step) * cfg.train.batch_size / max(elapsed, 1e-9)
                pending, window_start, window_step = [], time.perf_counter(), self.global_step
                bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{images_per_s:.0f}")
                self._write_metrics(
                    type="train", loss=mean_loss, lr=self.scheduler.lr, images_per_s=images_per_s,
                    **grad_norms, **self._prelu_slopes(),
                )  # fmt: skip
            if checkpoint_now:
                self._save("last.pt")
            if kill_at and self.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if max_steps is not None and done >= max_steps:
                break
        bar.close()
        self._check_losses(pending, self.global_step - len(pending) + 1)

    def end_epoch(self) -> dict[str, float]:
        """Validation, the LR rule, last.pt and the best-k checkpoints (collective)."""
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        due = self.epoch % self.cfg.train.val_every_epochs == 0 or self.epoch == self.cfg.train.epochs
        val = self.validate() if due else {}
        self.scheduler.end_of_epoch(val.get("val_top1_error"))
        if val:
            log.info(
                "epoch %d: val top-1 error %.2f%%, top-5 error %.2f%%, lr %.2g",
                self.epoch - 1, val["val_top1_error"], val["val_top5_error"], self.scheduler.lr,
            )  # fmt: skip
            self._write_metrics(type="val", epoch=self.epoch - 1, lr=self.scheduler.lr, **val)
        ranked = self._rank_best(val["val_top1_error"]) if val else None  # same on every rank
        last = self._save("last.pt")
        if ranked is not None and last is not None:
            self._link_best(last, *ranked)
        return val

    def fit(self) -> dict[str, float]:
        """Trains to `train.epochs`; returns the last validation errors."""
        cfg = self.cfg
        log.info(
            "training %s: %d epoch(s) x %d step(s), global batch %d over %d rank(s), device %s, run dir %s",
            getattr(cfg.model.name, "value", cfg.model.name), cfg.train.epochs, self.train_loader.steps_per_epoch,
            cfg.train.batch_size, self.ctx.world_size, self.device, self.run_dir,
        )  # fmt: skip
        self.model.train()
        last_val: dict[str, float] = {}
        while self.epoch < cfg.train.epochs:
            self.train_epoch()
            last_val = self.end_epoch() or last_val
        return last_val

    def _write_metrics(self, **record: Any) -> None:
        if self.metrics is not None:
            self.metrics.write({"step": self.global_step, "epoch": self.epoch, **record})

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """One device-to-host copy for all the per-layer statistics, not one sync per layer."""
    if not values:
        return {}
    return dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))
