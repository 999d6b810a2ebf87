"""The trainer: config composition and validation, DDP vs one process, exact kill-and-resume, NaN stop."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import run_train
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from delving.checkpoint import Checkpoint, CheckpointError, check_resumable
from delving.cli.common import CONFIG_DIR, register_resolvers
from delving.data.config import validate as validate_data
from delving.dist import environment_ranks
from delving.engine.config import OptimConfig, register_configs
from delving.engine.optim import CaffeSGD, build_optimizer
from delving.models import build_model

register_configs()
register_resolvers()
CONFIGS = Path(CONFIG_DIR)
GROUPS = ["model", "data", "optim", "sched", "eval", "logger", "launcher"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_builds(experiment: str) -> None:
    cfg = _compose([f"experiment={experiment}"])
    validate_data(cfg.data)
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert model.num_classes == cfg.model.num_classes
    assert cfg.train.batch_size > 0 and cfg.experiment_name == experiment


@pytest.mark.parametrize(
    "override", [f"{g}={p.stem}" for g in GROUPS for p in sorted((CONFIGS / g).glob("*.yaml"))]
)
def test_every_group_option_composes(override: str) -> None:
    cfg = _compose([override])
    group, option = override.split("=")
    if group == "model":
        assert cfg.model.name == option


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.act=tanh", r"model.act.*relu.*prelu.*prelu_shared.*leaky_relu"),
        ("model.init=orthogonal", r"he_fan_out.*he_fan_in.*xavier"),
        ("model=resnet50", r"model.*resnet50"),
        ("train.epochs=many", r"train.epochs"),
        ("train.epoch=3", r"train.epoch"),
        ("optim.momentum_form=adam", r"caffe.*pytorch"),
    ],
)
def test_bad_overrides_name_the_key_and_the_allowed_values(override: str, expected: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as error:
        _compose([override])
    message = str(error.value) + str(error.value.__cause__)
    assert re.search(expected, message, flags=re.S), message


def test_caffe_momentum_matches_the_formula_and_torch_sgd_until_an_lr_drop() -> None:
    torch.manual_seed(0)
    w_caffe = torch.nn.Parameter(torch.randn(5))
    w_torch = torch.nn.Parameter(w_caffe.detach().clone())
    caffe = CaffeSGD([w_caffe], lr=0.1, momentum=0.9, weight_decay=0.01)
    plain = torch.optim.SGD([w_torch], lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = [torch.randn(5) for _ in range(6)]
    velocity, w_ref = torch.zeros(5), w_caffe.detach().clone()
    for step, g in enumerate(grads):
        lr = 0.1 if step < 3 else 0.01
        for opt in (caffe, plain):
            opt.param_groups[0]["lr"] = lr
        w_caffe.grad, w_torch.grad = g.clone(), g.clone()
        caffe.step()
        plain.step()
        velocity = 0.9 * velocity + lr * (g + 0.01 * w_ref)
        w_ref = w_ref - velocity
        torch.testing.assert_close(w_caffe.detach(), w_ref)
        if step < 3:
            torch.testing.assert_close(w_caffe.detach(), w_torch.detach())
    assert not torch.allclose(w_caffe.detach(), w_torch.detach())  # the forms part at the LR drop


def test_optimizer_groups_never_decay_slopes_or_biases() -> None:
    net = build_model(
        {"name": "net14", "width": 0.0625, "num_classes": 4, "input_size": 24, "spp_levels": [2, 1]}
    )
    optimizer = build_optimizer(net, OptimConfig())
    slopes = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.PReLU)}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in slopes or p.ndim == 1:
                assert group["weight_decay"] == 0.0
            else:
                assert group["weight_decay"] == 5e-4


def test_slurm_variables_give_rank_world_size_and_master() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[07-08]"}  # fmt: skip
    assert environment_ranks(env) == (5, 16, 1)
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(20000 + 4242)
    assert environment_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}) == (3, 4, 3)
    assert environment_ranks({}) == (0, 1, 0)


# ---------------------------------------------------------------- runs (the session's `runs` fixture)
@pytest.mark.ddp
def test_resumed_run_equals_uninterrupted_run_bitwise_one_process(runs: dict[str, Path]) -> None:
    a, b = _weights(runs["single"] / "last.pt"), _weights(runs["single_killed"] / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert Checkpoint.load(runs["single_killed"] / "last.pt").train_state["global_step"] == 12


@pytest.mark.ddp
def test_resumed_run_equals_uninterrupted_run_bitwise_two_processes(runs: dict[str, Path]) -> None:
    a, b = _weights(runs["two_proc"] / "last.pt"), _weights(runs["two_killed"] / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.ddp
def test_two_process_ddp_equals_one_process(runs: dict[str, Path]) -> None:
    one, two = _weights(runs["one_proc"] / "last.pt"), _weights(runs["two_proc"] / "last.pt")
    start = build_model(torch.load(runs["one_proc"] / "last.pt", weights_only=True)["config"]["model"])
    moved = 0.0
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
        moved = max(moved, (one[key] - start.state_dict()[key]).abs().max().item())
    assert moved > 1e-4  # training did change the weights, so the comparison means something


@pytest.mark.ddp
def test_metrics_wandb_and_run_directory(runs: dict[str, Path]) -> None:
    run = runs["single"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    val = [r for r in records if r["type"] == "val"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12] and len(val) == 2
    assert {"loss", "lr", "images_per_s", "prelu_slope/features.act1", "grad_norm/features.conv1"} <= set(
        train[0]
    )
    assert 0 <= val[0]["val_top1_error"] <= 100 and val[0]["val_top5_error"] <= val[0]["val_top1_error"]
    assert list((run / "wandb").glob("offline-run-*"))
    assert (run / ".hydra" / "config.yaml").exists() and (run / "train.log").exists()
    best_files = sorted(p.name for p in run.glob("best-*.pt"))
    assert best_files == sorted(e["file"] for e in Checkpoint.load(run / "last.pt").train_state["best"])
    assert len(best_files) == 2  # both epochs, and last.pt lists the newest entry too
    # The killed run's log has no step twice: records past the checkpoint were dropped on resume.
    steps = [json.loads(line)["step"] for line in (runs["single_killed"] / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]  # fmt: skip
    assert steps == sorted(set(steps))
    two = runs["two_proc"]
    assert not list(two.parent.glob("two_proc?*")) and (two / "last.pt").exists()


@pytest.mark.ddp
def test_resume_refuses_another_model_or_schedule_and_corrupt_files(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    state = Checkpoint.load(runs["one_proc"] / "last.pt")
    other = json.loads(json.dumps(state.config))
    other["model"]["name"] = "net30"
    with pytest.raises(
        CheckpointError, match=r"another model.*model.name: checkpoint 'net14' vs run 'net30'"
    ):
        check_resumable(state, other, "last.pt")
    longer = json.loads(json.dumps(state.config))
    longer["train"]["epochs"] = 5
    with pytest.raises(CheckpointError, match=r"another schedule.*train.epochs: 2 -> 5"):
        check_resumable(state, longer, "last.pt")
    corrupt = tmp_path / "last.pt"
    corrupt.write_bytes((runs["one_proc"] / "last.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="unreadable"):
        Checkpoint.load(corrupt)
    result = run_train(tmp_path, ["resume=auto"], check=False)
    assert result.returncode != 0 and "unreadable" in result.stderr
    assert corrupt.stat().st_size == 1000  # nothing overwritten


def test_nan_loss_stops_the_run_naming_the_step(tmp_path: Path) -> None:
    result = run_train(
        tmp_path, ["optim.lr=1e12", "train.checkpoint_every_steps=2", "model.dropout=0.0"], check=False
    )
    assert result.returncode != 0
    # Step 1's loss is finite; its update blows the weights up, so step 2's loss is not. The check at step 2
    # comes before step 2's checkpoint: no non-finite state is ever saved.
    assert "NaN or Inf at global step 2 " in result.stderr and "resume=auto" in result.stderr
    assert not (tmp_path / "last.pt").exists()


def test_batch_that_does_not_split_over_ranks_is_refused(tmp_path: Path) -> None:
    result = run_train(tmp_path, ["train.batch_size=6", "train.grad_accum_steps=4"], check=False)
    assert result.returncode != 0 and "does not split evenly" in result.stderr
    assert not (tmp_path / "last.pt").exists()


def test_validation_subset_is_fixed_and_split_over_ranks_without_repeats() -> None:
    from delving.data.config import DataConfig
    from delving.data.loaders import EvalLoader

    cfg = DataConfig(
        synthetic_classes=4, synthetic_train_per_class=12, synthetic_val_per_class=4, synthetic_min_size=32,
        synthetic_max_size=40, crop_size=24, scale_min=28, scale_max=36, test_scale=28, num_workers=0,
    )  # fmt: skip
    ranks = [EvalLoader(cfg, "val", batch_size=2, rank=r, world_size=2, max_samples=7) for r in (0, 1)]
    chosen = sorted(ranks[0].indices + ranks[1].indices)
    assert len(chosen) == len(set(chosen)) == 7 == ranks[0].num_samples
    assert chosen == sorted(EvalLoader(cfg, "val", batch_size=3, max_samples=7).indices)
    assert chosen != list(range(7))  # a random subset, not the first classes only
    assert sum(len(labels) for r in ranks for _, labels in r) == 7


@pytest.mark.ddp
def test_resume_refuses_a_changed_recipe_naming_every_key(runs: dict[str, Path]) -> None:
    state = Checkpoint.load(runs["one_proc"] / "last.pt")
    changed = json.loads(json.dumps(state.config))
    changed["optim"]["lr"], changed["seed"], changed["data"]["crop_size"] = 0.1, 7, 20
    changed["logger"]["log_every_steps"], changed["data"]["root"] = 99, "/elsewhere"  # may change
    with pytest.raises(CheckpointError) as error:
        check_resumable(state, changed, "last.pt")
    message = str(error.value)
    assert (
        "data.crop_size: 24 -> 20" in message
        and "optim.lr: 0.01 -> 0.1" in message
        and "seed: 0 -> 7" in message
    )
    assert "logger" not in message and "data.root" not in message


def test_last_pt_is_saved_before_a_validation_that_fails(tmp_path: Path) -> None:
    """A validation that raises (here: every val image unreadable) loses nothing of the epoch's training."""
    from helpers.images import write_folder_data

    root = write_folder_data(tmp_path / "data", classes=4, train_per_class=12, val_per_class=2)
    for image in (root / "val").rglob("*.JPEG"):
        image.write_bytes(b"not a JPEG")
    result = run_train(
        tmp_path / "run", ["data=folder", f"data.root={root}", "data.max_bad_fraction=0"], check=False
    )
    assert result.returncode != 0 and "unreadable" in result.stderr
    state = Checkpoint.load(tmp_path / "run" / "last.pt").train_state
    assert state["epoch"] == 1 and state["global_step"] == 6 and state["val_pending"]
