"""Fine-tuning (init_from=), extending a finished run, and the opt-in knobs (label smoothing, warm-up and
cosine, AdamW, gradient clipping, EMA): each off by default, each doing what it must, each with exact resume."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import warm
from helpers.runs import KILL_STEP, REPO, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env, run_train
from omegaconf import DictConfig

from delving.checkpoint import Checkpoint, CheckpointError, check_resumable, init_weights_from
from delving.engine.optim import EpochScheduler, build_optimizer
from delving.engine.trainer import config_to_dict
from delving.models import build_model

Compose = Callable[[list[str]], DictConfig]


def _tiny(compose_train: Compose, *overrides: str) -> DictConfig:
    return compose_train([*TINY_DATA, *TINY_MODEL, *TINY_TRAIN, *overrides])


def _trainer(compose_train: Compose, run_dir: Path, *overrides: str):
    from delving.dist import DistributedContext
    from delving.engine.trainer import Trainer

    cfg = _tiny(compose_train, "model.dropout=0.0", "resume=null", *overrides)
    return Trainer(cfg, run_dir, DistributedContext(0, 1, 0, torch.device("cpu")))


def test_every_knob_is_off_by_default(compose_train: Compose) -> None:
    cfg = compose_train([])
    assert cfg.init_from is None and cfg.optim.name == "sgd" and cfg.sched.warmup_epochs == 0
    assert (cfg.train.label_smoothing, cfg.train.clip_grad_norm, cfg.train.ema_decay) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------- schedules
def _schedule(cfg: DictConfig, epochs: int) -> tuple[torch.optim.Optimizer, EpochScheduler]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    scheduler = EpochScheduler(optimizer, cfg.sched, epochs)
    optimizer.step()  # no gradient: changes nothing (and keeps the scheduler from warning)
    return optimizer, scheduler


def _lrs(cfg: DictConfig, epochs: int, start: tuple | None = None, first: int = 0) -> list[float]:
    """The LR each epoch trains at, from epoch `first` (after loading `start`: optimizer, scheduler)."""
    optimizer, scheduler = _schedule(cfg, epochs)
    if start is not None:
        optimizer.load_state_dict(start[0].state_dict())
        scheduler.load_state_dict(start[1].state_dict())
    lrs = []
    for _ in range(first, epochs):
        lrs.append(scheduler.lr)
        scheduler.end_of_epoch(50.0)
    return lrs


def test_warmup_then_cosine_lr_per_epoch(compose_train: Compose) -> None:
    cfg = compose_train(["sched=cosine", "sched.warmup_epochs=2", "sched.min_lr=0.001", "optim.lr=0.1"])
    cosine = [0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert _lrs(cfg, 6) == pytest.approx([0.1 / 3, 0.2 / 3, *cosine], rel=1e-12)
    assert _lrs(cfg, 6)[2] == pytest.approx(0.1)  # the first epoch after the warm-up is at optim.lr


def test_warmup_before_milestones_and_the_refused_combinations(compose_train: Compose) -> None:
    cfg = compose_train(["sched=milestones", "sched.milestones=[3]", "sched.warmup_epochs=1", "optim.lr=0.1"])
    assert _lrs(cfg, 5) == pytest.approx([0.05, 0.1, 0.1, 0.01, 0.01])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(Exception, match="takes no warm-up"):
        EpochScheduler(optimizer, compose_train(["sched=plateau", "sched.warmup_epochs=1"]).sched, 5)
    with pytest.raises(Exception, match=r"above sched\.warmup_epochs"):
        EpochScheduler(optimizer, compose_train(["sched=cosine", "sched.warmup_epochs=5"]).sched, 5)


@pytest.mark.parametrize(
    "sched", [["sched=milestones", "sched.milestones=[3]"], ["sched=plateau", "sched.patience=1"]]
)
def test_an_extended_schedule_continues_as_the_longer_run(compose_train: Compose, sched: list[str]) -> None:
    """Milestones keep their epochs, plateau keeps following the val error: 4 epochs then 4 more equal 8."""
    cfg = compose_train([*sched, "optim.lr=0.1"])
    short = _schedule(cfg, 4)
    for _ in range(4):
        short[1].end_of_epoch(50.0)
    assert _lrs(cfg, 8, short, first=4) == _lrs(cfg, 8)[4:]
    assert _lrs(cfg, 8)[-1] < 0.1  # the rule did act over the new epochs


def test_extending_is_allowed_only_for_more_epochs_of_a_schedule_without_a_total(
    compose_train: Compose,
) -> None:
    def checkpoint_of(*overrides: str) -> tuple[Checkpoint, dict]:
        config = config_to_dict(compose_train(["train.epochs=2", *overrides]))
        return Checkpoint(model={}, config=config), json.loads(json.dumps(config))

    for sched in ("sched=milestones", "sched=plateau", "sched=constant"):
        saved, longer = checkpoint_of(sched)
        longer["train"]["epochs"] = 3
        check_resumable(saved, longer, "last.pt")
        longer["optim"]["lr"] = 0.5  # more epochs, and another recipe: refused
        with pytest.raises(CheckpointError, match=r"optim\.lr"):
            check_resumable(saved, longer, "last.pt")
    saved, longer = checkpoint_of("sched=cosine", "sched.warmup_epochs=0")
    longer["train"]["epochs"] = 3
    with pytest.raises(CheckpointError, match=r"train\.epochs: 2 -> 3"):
        check_resumable(saved, longer, "last.pt")


@pytest.mark.parametrize(
    "change",
    ["train.label_smoothing=0.1", "train.clip_grad_norm=1.0", "train.ema_decay=0.99", "optim=adamw",
     "sched.warmup_epochs=1", "sched=cosine"],
)  # fmt: skip
def test_resume_refuses_turning_a_knob_on(compose_train: Compose, change: str) -> None:
    saved = Checkpoint(model={}, config=config_to_dict(compose_train(["sched=milestones"])))
    with pytest.raises(CheckpointError, match="another schedule or recipe"):
        check_resumable(saved, config_to_dict(compose_train(["sched=milestones", change])), "last.pt")


def test_a_checkpoint_written_before_the_knobs_resumes(compose_train: Compose) -> None:
    config = config_to_dict(compose_train([]))
    old = json.loads(json.dumps(config))
    del old["init_from"], old["optim"]["name"], old["optim"]["betas"], old["sched"]["warmup_epochs"]
    del old["train"]["ema_decay"], old["train"]["clip_grad_norm"], old["train"]["label_smoothing"]
    del old["paths"]  # before the paths group; paths.* say where runs are written, which may change
    check_resumable(Checkpoint(model={}, config=old), config, "last.pt")


# ---------------------------------------------------------------- optimizer, loss, clipping, EMA
def test_adamw_decays_weights_and_never_biases_or_slopes(compose_train: Compose) -> None:
    cfg = _tiny(compose_train, "optim=adamw", "optim.lr=0.1", "optim.weight_decay=0.5")
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.optim)
    assert isinstance(optimizer, torch.optim.AdamW)
    before = {k: v.clone() for k, v in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decoupled decay moves anything
    optimizer.step()
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if p.ndim > 1 else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0), name


def test_label_smoothing_clipping_and_the_ema_in_a_train_step(compose_train: Compose, tmp_path: Path) -> None:
    trainer = _trainer(
        compose_train, tmp_path, "train.label_smoothing=0.2", "train.clip_grad_norm=0.001",
        "train.ema_decay=0.5", "optim=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.lr=0.1",
    )  # fmt: skip
    try:
        images, labels = next(iter(trainer.train_loader.epoch(0, 0)))
        with torch.no_grad():
            expected = F.cross_entropy(trainer.model(images), labels, label_smoothing=0.2)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        loss, _ = trainer.train_step(images, labels, want_grad_norms=False)
        torch.testing.assert_close(loss, expected)
        # Plain SGD: the update is lr x the clipped gradient, whose global norm is the clip value.
        update = torch.cat(
            [(b - p.detach()).flatten() for b, p in zip(before, trainer.model.parameters(), strict=True)]
        )
        assert update.norm().item() == pytest.approx(0.1 * 0.001, rel=1e-3)
        # The EMA's first update copies the weights; the second averages (decay 0.5).
        live1 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        assert all(torch.equal(trainer._ema_weights()[k], live1[k]) for k in live1)
        trainer.train_step(images, labels, want_grad_norms=False)
        live2 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        for k in live2:
            torch.testing.assert_close(trainer._ema_weights()[k], 0.5 * live1[k] + 0.5 * live2[k])
        with trainer._evaluating_ema():  # validation sees the EMA, training gets its weights back bitwise
            assert all(torch.equal(trainer.model.state_dict()[k], trainer._ema_weights()[k]) for k in live2)
        assert all(torch.equal(trainer.model.state_dict()[k], live2[k]) for k in live2)
    finally:
        trainer.close()


KNOBS = [
    "model.dropout=0.0", "train.checkpoint_every_steps=2", "optim=adamw", "optim.lr=0.001",
    "sched=milestones", "sched.milestones=[1]", "sched.warmup_epochs=1", "train.label_smoothing=0.1",
    "train.clip_grad_norm=0.5", "train.ema_decay=0.9",
]  # fmt: skip


@pytest.mark.slow
def test_killed_and_resumed_run_with_every_knob_on_is_bitwise_equal(tmp_path: Path) -> None:
    run_train(tmp_path / "whole", KNOBS)
    killed = run_train(
        tmp_path / "killed", KNOBS, check=False, env=cli_env(DELVING_KILL_AT_STEP=str(KILL_STEP))
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_train(tmp_path / "killed", [*KNOBS, "resume=auto"])
    a, b = Checkpoint.load(tmp_path / "whole" / "last.pt"), Checkpoint.load(tmp_path / "killed" / "last.pt")
    assert a.ema and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    assert not all(torch.equal(a.model[k], a.eval_weights()[k]) for k in a.model)  # the EMA is not the model
    model = a.build_model()  # what delving-eval (and init_from=) read: the EMA
    assert all(torch.equal(model.state_dict()[k], a.eval_weights()[k]) for k in a.model)


# ---------------------------------------------------------------- extending, fine-tuning
@pytest.mark.slow
def test_a_finished_run_extended_equals_the_longer_run(single_run: Path, tmp_path: Path) -> None:
    """single_run (2 epochs, sched=constant, finished) copied, relaunched with train.epochs=3: the same
    weights as 3 epochs uninterrupted (the same data order, dropout stream and LR; validation draws nothing)."""
    extended = tmp_path / "extended"
    shutil.copytree(single_run, extended, ignore=shutil.ignore_patterns("wandb"))
    assert (extended / "finished.json").exists()
    run_train(extended, ["train.checkpoint_every_steps=2", "train.epochs=3", "resume=auto"])
    run_train(tmp_path / "whole", ["train.checkpoint_every_steps=2", "train.epochs=3"])
    a, b = Checkpoint.load(extended / "last.pt"), Checkpoint.load(tmp_path / "whole" / "last.pt")
    assert a.train_state["global_step"] == 18 and a.config["train"]["epochs"] == 3
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert json.loads((extended / "finished.json").read_text())["epochs"] == 3


@pytest.mark.slow
def test_init_from_keeps_every_weight_but_a_classifier_of_another_class_count(
    single_run: Path, compose_train: Compose, tmp_path: Path
) -> None:
    source = Checkpoint.load(single_run / "last.pt").eval_weights()
    cfg = _tiny(compose_train, "model.num_classes=3")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert "re-initialized for 3 classes" in init_weights_from(model, single_run / "last.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh[key] if key.startswith("head.fc3.") else source[key]), key
    # A timm checkpoint file (a train.py-style dict) of the same class count loads strictly.
    torch.save({"state_dict": source, "epoch": 3}, tmp_path / "timm.pth")
    same = build_model(_tiny(compose_train).model)
    assert "all" in init_weights_from(same, tmp_path / "timm.pth")
    assert all(torch.equal(v, source[k]) for k, v in same.state_dict().items())
    # Another net: the message lists the keys.
    with pytest.raises(
        CheckpointError, match=r"another shape \(\d+\): features.act1.weight \(4,\) vs \(8,\)"
    ):
        init_weights_from(
            build_model(_tiny(compose_train, "model.width=0.125").model), single_run / "last.pt"
        )
    with pytest.raises(CheckpointError, match=r"unexpected \(\d+\): features.act1.weight"):
        init_weights_from(build_model(_tiny(compose_train, "model.act=relu").model), single_run / "last.pt")


@pytest.mark.slow
def test_init_from_fine_tunes_then_resume_wins(single_run: Path, tmp_path: Path) -> None:
    fine_tune = ["data.synthetic_classes=3", "model.num_classes=3", f"init_from={single_run / 'last.pt'}"]
    first = run_train(tmp_path, [*fine_tune, "train.epochs=1"])
    assert "re-initialized for 3 classes" in first.stdout + first.stderr
    state = Checkpoint.load(tmp_path / "last.pt")
    assert state.train_state["global_step"] == 4 and state.config["init_from"] == str(single_run / "last.pt")
    second = run_train(tmp_path, [*fine_tune, "train.epochs=2"])  # extends the fine-tuned run
    assert "is not read again" in second.stdout + second.stderr
    assert Checkpoint.load(tmp_path / "last.pt").train_state["global_step"] == 8
    both = run_train(tmp_path / "both", [*fine_tune, f"resume={tmp_path / 'last.pt'}"], check=False)
    assert both.returncode != 0 and "give one of them" in both.stdout + both.stderr


# ---------------------------------------------------------------- sweeps
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper is not installed (pip install 'delving[sweep]')",
)
def test_a_two_trial_optuna_sweep(tmp_path: Path) -> None:
    import sys

    command = [
        sys.executable, "-m", "delving.train", "-m", "hparams_search=lr_wd", *TINY_DATA, *TINY_MODEL,
        *(o for o in TINY_TRAIN if not o.startswith("optim.lr")), "train.epochs=1",
        "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}",
    ]  # fmt: skip
    result = warm.run(command, env=cli_env(), cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    trials = sorted(tmp_path.glob("*/finished.json"))
    assert len(trials) == 2
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_params" in best and "optim.lr" in best
