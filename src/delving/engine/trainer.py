"""The Trainer: DDP training of any registered net with exact resume, metrics and checkpoints.

It knows the model only as an nn.Module (plus the param-group helper) and the data only through
TrainLoader/EvalLoader; every rank runs the same steps and the same collectives. Once a step, the ranks
agree (on a CPU control group) whether to stop for a signal, whether a rank failed, and whether a log
line is due, so a stop is exact and one rank's error stops them all at the same step.
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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from delving.checkpoint import (
    Checkpoint,
    TrainState,
    capture_rng_state,
    check_mean_image,
    check_resumable,
    init_weights_from,
    load_weights,
    restore_rng_state,
)
from delving.data.config import Normalize
from delving.data.datasets import ClassListError, check_class_lists
from delving.data.loaders import EvalLoader, TrainLoader
from delving.data.normalize import mean_image_path
from delving.data.readers import prepare_listings
from delving.data.same_data import check_ranks_see_the_same_data
from delving.dist import (
    DistributedContext,
    agree,
    all_reduce,
    fail_together,
    failing_together,
    gather_to_main,
)
from delving.engine.config import AppConfig, Precision, as_app_config
from delving.engine.optim import EpochScheduler, build_optimizer, lr_scale
from delving.engine.run_dir import RunDirectory, starts_fresh
from delving.engine.run_log import MetricsLog, TrainingProgress, log
from delving.engine.signals import StopRequested, StopSignals
from delving.errors import UserError
from delving.models import build_model
from delving.numerics import fp32_math, set_tf32
from delving.reproducible import ARITHMETIC_KEYS, arithmetic
from delving.run_files import best_checkpoint_name

# Test hooks (fault injection): SIGKILL this process right after this global step; sleep after each step.
KILL_AT_STEP_ENV = "DELVING_KILL_AT_STEP"
STEP_SLEEP_ENV = "DELVING_STEP_SLEEP_S"


class NonFiniteLossError(UserError):
    pass


def config_to_dict(cfg: AppConfig | DictConfig) -> dict[str, Any]:
    """The config as the checkpoint and metrics.jsonl keep it: plain values, enums as their names."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def _dropout_seed(seed: int, rank: int, offset: int = 0) -> int:
    """Each rank's own stream for dropout, apart from the data order's."""
    return seed * 1_000_003 + rank + offset


class Trainer:
    def __init__(
        self,
        cfg: AppConfig | DictConfig,
        run: RunDirectory | str | Path,
        ctx: DistributedContext,
        stop: StopSignals | None = None,
    ) -> None:
        cfg = as_app_config(cfg)  # typed once: everything below reads the dataclasses
        self.cfg, self.config, self.ctx = cfg, config_to_dict(cfg), ctx
        self.run, self.stop = RunDirectory.of(run), stop or StopSignals()
        self.device = ctx.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark and not cfg.train.reproducible
        # Training and validation; the final evaluation runs as eval.tf32 says. A reproducible run keeps IEEE fp32.
        set_tf32(cfg.train.tf32 and not cfg.train.reproducible)
        with failing_together(ctx):  # a rank that cannot build its part must not leave the others in DDP
            torch.manual_seed(cfg.seed)  # the same initial weights on every rank
            self.model = build_model(cfg.model).to(self.device)
            if cfg.train.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
            scale = lr_scale(cfg.optim, cfg.train.batch_size)
            self.optimizer = build_optimizer(self.model, cfg.optim, scale)
            self.ema = self._build_ema()
            self.precision = cfg.train.precision
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision is Precision.fp16)
            self._build_loaders()
            self.scheduler = EpochScheduler(
                self.optimizer, cfg.sched, cfg.train.epochs, scale, self.train_loader.steps_per_epoch
            )
        # After the block above: a rank that failed there has left it, and this collective must pair up.
        check_ranks_see_the_same_data(
            ctx,
            {
                cfg.data.train_split: (self.train_loader.reader, self.train_loader.classes),
                cfg.data.val_split: (self.val_loader.reader, self.val_loader.classes),
            },
        )
        if scale != 1.0:
            log.info(
                "optim.scale_lr: lr %g x %d / %d = %g", cfg.optim.lr, cfg.train.batch_size,
                cfg.optim.reference_batch_size, cfg.optim.lr * scale,
            )  # fmt: skip
        self.net = self._wrap_model()
        self.state = TrainState()
        self.arithmetic = arithmetic()  # recorded in last.pt and metrics.jsonl: what decided the numbers
        self.metrics: MetricsLog | None = None
        with failing_together(ctx):
            wandb_run_id = self._restore_or_seed()
            if self.ctx.is_main:
                self.metrics = MetricsLog(self.run, cfg.logger, self.config, wandb_run_id)
                # Records a killed run wrote after last.pt (and its validation, when last.pt came before it).
                self.metrics.truncate_after(self.state.global_step, keep_val=not self.state.val_pending)
                self.metrics.write({"type": "arithmetic", "step": self.state.global_step, **self.arithmetic})

    def _per_rank_batch(self) -> int:
        train = self.cfg.train
        per_rank, remainder = divmod(train.batch_size, self.ctx.world_size * train.grad_accum_steps)
        if remainder or per_rank == 0:
            raise UserError(
                f"train.batch_size={train.batch_size} (global) does not split evenly over {self.ctx.world_size} "
                f"rank(s) x {train.grad_accum_steps} accumulation step(s); pick a multiple of "
                f"{self.ctx.world_size * train.grad_accum_steps}."
            )
        return per_rank

    def _build_loaders(self) -> None:
        cfg, per_rank = self.cfg, self._per_rank_batch()
        if self.ctx.is_distributed:
            # Each node's first rank lists the folders (or finds them stored) and stores the listing; the other
            # ranks read it after this collective instead of walking 1.28 M files again.
            with failing_together(self.ctx):
                if self.ctx.local_rank == 0:
                    prepare_listings(cfg.data)
        self.train_loader = TrainLoader(
            cfg.data,
            batch_size=per_rank * cfg.train.grad_accum_steps,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            seed=cfg.seed,
            pin_memory=self.device.type == "cuda",
            device=self.device,
        )
        self.classes = list(self.train_loader.classes)
        if self.train_loader.num_classes != cfg.model.num_classes:
            raise UserError(
                f"the data set has {self.train_loader.num_classes} classes but model.num_classes="
                f"{cfg.model.num_classes}; set model.num_classes={self.train_loader.num_classes}"
            )
        self.val_loader = EvalLoader(
            cfg.data,
            cfg.data.val_split,
            batch_size=per_rank,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            max_samples=cfg.train.val_max_images,
            pin_memory=self.device.type == "cuda",
            device=self.device,
        )

    def _build_ema(self) -> AveragedModel | None:
        """train.ema_decay > 0: PyTorch's AveragedModel as an EMA (its first update copies the weights)."""
        decay = float(self.cfg.train.ema_decay)
        if not decay:
            return None
        if not 0 < decay < 1:
            raise UserError(f"train.ema_decay must be in (0, 1) (0: off), got {decay}")
        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def _ema_weights(self) -> dict[str, torch.Tensor]:
        assert self.ema is not None
        return self.ema.module.state_dict()

    @contextlib.contextmanager
    def _evaluating_ema(self) -> Any:
        """The EMA's weights in the model for a validation, the live ones back after it (exact copies)."""
        if self.ema is None:
            yield
            return
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self._ema_weights())
        try:
            yield
        finally:
            self.model.load_state_dict(live)

    def _wrap_model(self) -> nn.Module:
        net: nn.Module = torch.compile(self.model) if self.cfg.train.compile else self.model
        if self.ctx.is_distributed:
            ddp = self.cfg.train.ddp
            net = DistributedDataParallel(
                net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                bucket_cap_mb=ddp.bucket_cap_mb,
                gradient_as_bucket_view=ddp.gradient_as_bucket_view,
                static_graph=ddp.static_graph,
            )
        return net

    def release_loaders(self) -> None:
        """Ends the training loaders' worker processes (the final evaluation starts its own)."""
        for loader in (self.train_loader, self.val_loader):
            if loader is not None:
                loader.close()
        self.train_loader = self.val_loader = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- resume
    def _resume_path(self) -> Path | None:
        resume, last = self.cfg.resume, self.run.last
        if starts_fresh(resume):
            return None
        if resume == "auto":
            if not last.exists():
                log.info("resume=auto: no %s yet, starting a new run", last)
                return None
            return last
        if last.exists() and last.resolve() != Path(resume).resolve():
            # A relaunched or requeued job repeats its command: once the run has its own last.pt, that wins.
            log.info("resume=%s: the run has its own %s now, which is where it continues", resume, last)
            return last
        return Path(resume)

    def _restore_or_seed(self) -> str | None:
        """Restores everything from the checkpoint to resume from, if any; returns its wandb run id."""
        path = self._resume_path()
        init_from = self.cfg.init_from
        if init_from and path is not None and self.cfg.resume != "auto":
            raise UserError(
                f"resume={self.cfg.resume} and init_from={init_from}: resume= continues a run (its weights, "
                "optimizer and schedule), init_from= starts a new one from weights; give one of them"
            )
        if path is None:
            if init_from:
                log.info("init_from: %s", init_weights_from(self.model, init_from))
            torch.manual_seed(_dropout_seed(self.cfg.seed, self.ctx.rank))
            return None
        if init_from:
            log.info("resume=auto: %s exists, so init_from=%s is not read again", path, init_from)
        checkpoint = Checkpoint.load(path)
        check_resumable(checkpoint, self.config, path)
        if (
            self._mean_image() is not None
        ):  # a recomputed mean_image.npy would change every input from here on
            check_mean_image(checkpoint, self._mean_image(), mean_image_path(self.cfg.data), path)
        try:  # before any step: last.pt must keep the class names it was trained on
            check_class_lists(
                checkpoint.classes or self.classes, self.classes, "the checkpoint", "the data set", path
            )
        except ClassListError as error:
            raise ClassListError(
                f"{error}. Resume on the data it was trained on, or start a new run (another run_name=; "
                f"init_from={path} fine-tunes from its weights)"
            ) from None
        load_weights(self.model, checkpoint.model, path, "this model")
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        self.scaler.load_state_dict(checkpoint.scaler)
        if self.ema is not None:
            if not checkpoint.ema:
                raise UserError(f"{path} holds no EMA of the weights, but train.ema_decay is on")
            self.ema.load_state_dict(checkpoint.ema)
        self.state.load_state_dict(checkpoint.train_state)
        if len(checkpoint.rng) == self.ctx.world_size:
            restore_rng_state(checkpoint.rng[self.ctx.rank], self.device, self.ctx.local_rank)
        else:
            log.warning(
                "checkpoint has RNG states of %d ranks, this run has %d: dropout draws will differ from an "
                "uninterrupted run (the data order does not).",
                len(checkpoint.rng),
                self.ctx.world_size,
            )
            torch.manual_seed(_dropout_seed(self.cfg.seed, self.ctx.rank, self.state.global_step))
        saved = {k: checkpoint.arithmetic.get(k) for k in ARITHMETIC_KEYS}
        if checkpoint.arithmetic and saved != {k: self.arithmetic[k] for k in ARITHMETIC_KEYS}:
            log.warning(
                "%s was computed with %s, this launch computes with %s: the numbers will differ from an "
                "uninterrupted run's (train.reproducible=true pins them)",
                path, saved, {k: self.arithmetic[k] for k in ARITHMETIC_KEYS},
            )  # fmt: skip
        log.info(
            "resumed from %s at epoch %d, step %d (global step %d)",
            path, self.state.epoch, self.state.step_in_epoch, self.state.global_step,
        )  # fmt: skip
        return checkpoint.wandb_run_id

    def _save(self) -> Path | None:
        """Collective: gathers every rank's RNG state; rank 0 writes last.pt atomically. A failed write
        (a full disk) stops every rank with its message, not only rank 0."""
        rng_states = gather_to_main(capture_rng_state(self.device), self.ctx)
        path = self.run.last
        with failing_together(self.ctx):
            if self.ctx.is_main:
                self._checkpoint(rng_states or []).save(path)
        return path if self.ctx.is_main else None

    def _checkpoint(self, rng_states: list[dict[str, Any]]) -> Checkpoint:
        return Checkpoint(
            model=self.model.state_dict(),
            config=self.config,
            classes=list(self.classes),
            train_state=self.state.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng_states,
            wandb_run_id=self.metrics.wandb_run_id if self.metrics else None,
            pretrained_cfg=Checkpoint.pretrained_cfg_of(self.model, self.config),
            ema=self.ema.state_dict() if self.ema is not None else None,
            mean_image=self._mean_image(),
            arithmetic=self.arithmetic,
            data_copy=self.train_loader.data_copy,
        )

    def _mean_image(self) -> torch.Tensor | None:
        """data.normalize=mean_image: the mean image the loaders subtract (on the CPU), else None."""
        if self.cfg.data.normalize != Normalize.mean_image:
            return None
        return self.train_loader.normalizer.mean.cpu()

    def _update_best_k(self, top1_error: float, finished: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """This epoch's best-k entry and the entries it pushes out; updated before last.pt is saved."""
        entry = {"top1_error": top1_error, "epoch": finished, "file": best_checkpoint_name(finished)}
        ranked = sorted([*self.state.best, entry], key=lambda e: (e["top1_error"], e["epoch"]))
        self.state.best = ranked[: self.cfg.train.keep_best]
        return entry, ranked[self.cfg.train.keep_best :]

    def _link_best(self, last: Path, entry: dict[str, Any], dropped: list[dict[str, Any]]) -> None:
        """Best-k checkpoints are hard links to last.pt (no second write of the state); rank 0 only."""
        if entry in self.state.best:
            target = self.run.best(entry["file"])
            target.unlink(missing_ok=True)
            try:
                os.link(last, target)
            except OSError:
                shutil.copyfile(last, target)
        for old in dropped:
            self.run.best(old["file"]).unlink(missing_ok=True)

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
        accum, train = self.cfg.train.grad_accum_steps, self.cfg.train
        total = torch.zeros((), device=self.device)
        for index, (x, y) in enumerate(zip(images.chunk(accum), labels.chunk(accum), strict=True)):
            sync = index == accum - 1 or not isinstance(self.net, DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.net.no_sync(), self._autocast():
                loss = F.cross_entropy(self.net(x), y, label_smoothing=train.label_smoothing) / accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        grad_norms = self._grad_norms() if want_grad_norms else {}
        if train.clip_grad_norm > 0:
            if self.precision is Precision.fp16 and not want_grad_norms:  # _grad_norms has unscaled them
                self.scaler.unscale_(self.optimizer)
            # DDP has averaged the gradients: every rank clips by the same global norm.
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return total, grad_norms

    def _grad_norms(self) -> dict[str, float]:
        # After backward: DDP has averaged the gradients, so every rank sees the same values. Under fp16 the
        # gradients are unscaled first (GradScaler.step then skips its own unscale), so the norms are true.
        if self.precision is Precision.fp16:
            self.scaler.unscale_(self.optimizer)
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
            last = self.run.last
            where = (
                f"{last} still holds the last good state"
                if last.is_file()
                else f"no checkpoint was saved yet ({last} does not exist), so the run starts again from step 0"
            )
            raise NonFiniteLossError(
                f"the loss became NaN or Inf at global step {int(first_bad)} (epoch {self.state.epoch}). The "
                f"run stopped; {where}. Lower optim.lr, check the data (delving-verify-data) or the init, then "
                "relaunch (resume=auto)."
            )
        total = all_reduce(torch.tensor([stacked.sum().item(), len(losses)], dtype=torch.float64), "sum")
        return total[0].item() / max(total[1].item(), 1.0)

    def _agree(self, error: BaseException | None, log_due: bool) -> tuple[bool, bool]:
        """The once-a-step collective: (stop for a signal, print a log line); re-raises any rank's error."""
        stop, failed, log_now = agree(
            self.ctx, [int(self.stop.requested), int(error is not None), int(log_due)]
        )
        if failed:
            fail_together(self.ctx, error)
        return bool(stop), bool(log_now)

    # ---------------------------------------------------------------- loops
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Center-crop top-1/top-5 error on the val split; each image counted once over all ranks."""
        from delving.evaluation.metrics import true_class_rank

        self.model.eval()
        top1_hits = top5_hits = seen = 0
        for images, labels in self.val_loader:
            with self._autocast():
                logits = self.model(images.to(self.device, non_blocking=True)).float().cpu()
            ranks = true_class_rank(logits.numpy(), labels.numpy())  # metrics.py's tie rule, as in evaluation
            top1_hits += int((ranks < 1).sum())
            top5_hits += int((ranks < 5).sum())
            seen += len(labels)
        counts = torch.tensor([top1_hits, top5_hits, seen, self.val_loader.skipped], dtype=torch.float64)
        top1_hits, top5_hits, seen, skipped = all_reduce(counts, "sum").tolist()
        if int(seen + skipped) != self.val_loader.num_samples:
            raise RuntimeError(
                f"validation counted {int(seen + skipped)} images, the split has {self.val_loader.num_samples}"
            )
        self.model.train()
        if not seen:
            raise UserError(
                f"no validation image could be read ({int(skipped)} skipped); check the val split"
            )
        return {
            "val_top1_error": 100 * (1 - top1_hits / seen),
            "val_top5_error": 100 * (1 - top5_hits / seen),
        }

    def train_epoch(self) -> None:
        """Trains the rest of the current epoch (from `step_in_epoch`), logging and checkpointing on the way.

        Raises StopRequested after saving last.pt when a stop signal reached any rank.
        """
        cfg, state = self.cfg, self.state
        steps = self.train_loader.steps_per_epoch
        kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0"))
        step_sleep = float(os.environ.get(STEP_SLEEP_ENV, "0"))
        log_every, ckpt_every = cfg.logger.log_every_steps, cfg.train.checkpoint_every_steps
        line = TrainingProgress(
            state.epoch, cfg.train.epochs, steps, state.step_in_epoch, cfg.train.batch_size,
            cfg.logger.log_every_seconds, show=self.ctx.is_main, bar=cfg.logger.progress_bar,
        )  # fmt: skip
        pending: list[torch.Tensor] = []
        batches = iter(self.train_loader.epoch(state.epoch, state.step_in_epoch))
        for _ in range(steps - state.step_in_epoch):
            error, batch = None, None
            waited = time.perf_counter()
            try:
                batch = next(batches)
            except Exception as exc:  # e.g. too many unreadable images: every rank must learn of it
                error = exc
            line.waited(time.perf_counter() - waited)
            stop, log_now = self._agree(error, line.due())
            if stop:  # the losses first: a NaN in the unchecked steps must not reach last.pt
                self._check_losses(pending, state.global_step - len(pending) + 1)
                self._save()
                raise StopRequested(self.stop.received or signal.SIGTERM)
            images, labels = batch  # type: ignore[misc]
            self.scheduler.before_step(state.global_step)
            want_grad_norms = (state.global_step + 1) % log_every == 0
            loss, grad_norms = self.train_step(images, labels, want_grad_norms=want_grad_norms)
            pending.append(loss)
            state.global_step += 1
            state.step_in_epoch += 1
            line.step()
            checkpoint_now = (
                ckpt_every > 0 and state.global_step % ckpt_every == 0 and state.step_in_epoch < steps
            )
            if want_grad_norms or checkpoint_now or log_now:
                mean_loss = self._check_losses(pending, state.global_step - len(pending) + 1)
                pending = []
                images_per_s = line.report(state.step_in_epoch, mean_loss, self.scheduler.lr)
                if want_grad_norms or checkpoint_now:
                    self._write_metrics(
                        type="train", loss=mean_loss, lr=self.scheduler.lr, images_per_s=images_per_s,
                        **grad_norms, **self._prelu_slopes(),
                    )  # fmt: skip
            if checkpoint_now:
                self._save()
            if kill_at and state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if step_sleep:
                time.sleep(step_sleep)
        line.close()
        self._check_losses(pending, state.global_step - len(pending) + 1)

    def end_epoch(self) -> dict[str, float]:
        """last.pt first (a failure in validation loses nothing of the epoch), then the validation if due."""
        state = self.state
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        state.val_pending = (
            state.epoch % self.cfg.train.val_every_epochs == 0 or state.epoch == self.cfg.train.epochs
        )
        if not state.val_pending:
            self.scheduler.end_of_epoch(None)
        self._save()
        return self.finish_validation() if state.val_pending else {}

    def finish_validation(self) -> dict[str, float]:
        """The finished epoch's validation, the LR rule, last.pt again and the best-k links (collective)."""
        finished = self.state.epoch - 1
        with self._evaluating_ema():
            val = self.validate()
        self.scheduler.end_of_epoch(val["val_top1_error"])
        log.info(
            "epoch %d: val top-1 error %.2f%%, top-5 error %.2f%%, lr %.2g",
            finished, val["val_top1_error"], val["val_top5_error"], self.scheduler.lr,
        )  # fmt: skip
        self._write_metrics(type="val", epoch=finished, lr=self.scheduler.lr, **val)
        ranked = self._update_best_k(val["val_top1_error"], finished)  # the same on every rank
        self.state.val_pending, self.state.last_val = False, dict(val)
        last = self._save()
        with failing_together(self.ctx):
            if last is not None:
                self._link_best(last, *ranked)
        return val

    def fit(self) -> dict[str, float]:
        """Trains to `train.epochs`; returns the last validation errors. Raises StopRequested on a signal."""
        cfg = self.cfg
        math = fp32_math() if self.device.type == "cuda" else {"conv": "ieee", "matmul": "ieee"}
        log.info(
            "training %s: %d epoch(s) x %d step(s), global batch %d over %d rank(s), device %s (float32 convs %s, "
            "matmuls %s), run dir %s",
            self.config["model"]["name"], cfg.train.epochs, self.train_loader.steps_per_epoch,
            cfg.train.batch_size, self.ctx.world_size, self.device, math["conv"], math["matmul"], self.run.path,
        )  # fmt: skip
        log.info(
            "arithmetic: %s CPU kernels, %d intra-op thread(s), deterministic algorithms %s (%s)",
            self.arithmetic["cpu_capability"], self.arithmetic["threads"],
            "on" if self.arithmetic["deterministic_algorithms"] else "off",
            "train.reproducible=true: pinned" if cfg.train.reproducible
            else "train.reproducible=false: another CPU or thread count gives other numbers",
        )  # fmt: skip
        self.model.train()
        if self.state.val_pending:
            self.finish_validation()
        while self.state.epoch < cfg.train.epochs:
            self.train_epoch()
            self.end_epoch()
        if self.ema is not None:  # training is over: the final evaluation reads the EMA, as validation did
            self.model.load_state_dict(self._ema_weights())
        return self.state.last_val

    def _write_metrics(self, **record: Any) -> None:
        with failing_together(self.ctx):  # every rank calls it: a full disk on rank 0 stops them all
            if self.metrics is not None:
                self.metrics.write({"step": self.state.global_step, "epoch": self.state.epoch, **record})

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """One device-to-host copy for all the per-layer statistics, not one sync per layer."""
    if not values:
        return {}
    return dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))
