"""The Trainer: exact resume, DDP equal to one process, its metrics and files, and the runs it refuses."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import warm
from helpers.data import make_folder_dataset
from helpers.runs import REPO, TINY_DATA, cli_env, run_train
from omegaconf import OmegaConf

from delving.checkpoint import Checkpoint
from delving.models import build_model


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return Checkpoint.load(path).model


def _records(run: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == kind]


@pytest.mark.ddp
def test_killed_and_resumed_run_equals_the_uninterrupted_one_bitwise(
    single_run: Path, killed_and_resumed_run: Path
) -> None:
    a, b = _weights(single_run / "last.pt"), _weights(killed_and_resumed_run / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert Checkpoint.load(killed_and_resumed_run / "last.pt").train_state["global_step"] == 12


@pytest.mark.ddp
def test_killed_and_resumed_two_process_run_equals_the_uninterrupted_one_bitwise(
    ddp_runs: dict[str, Path],
) -> None:
    a, b = _weights(ddp_runs["two_proc"] / "last.pt"), _weights(ddp_runs["two_killed"] / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.ddp
def test_two_process_ddp_equals_one_process(ddp_runs: dict[str, Path]) -> None:
    one, two = _weights(ddp_runs["one_proc"] / "last.pt"), _weights(ddp_runs["two_proc"] / "last.pt")
    start = build_model(Checkpoint.load(ddp_runs["one_proc"] / "last.pt").config["model"])
    moved = 0.0
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
        moved = max(moved, (one[key] - start.state_dict()[key]).abs().max().item())
    assert moved > 1e-4  # training did change the weights, so the comparison means something


@pytest.mark.ddp
def test_ddp_with_its_knobs_turned_still_equals_one_process(
    ddp_runs: dict[str, Path], tuned_ddp_run: Path
) -> None:
    one, tuned = _weights(ddp_runs["one_proc"] / "last.pt"), _weights(tuned_ddp_run / "last.pt")
    for key in one:
        torch.testing.assert_close(tuned[key], one[key], rtol=1e-4, atol=1e-6)
    assert Checkpoint.load(tuned_ddp_run / "last.pt").config["train"]["ddp"]["static_graph"] is True


@pytest.mark.ddp
def test_metrics_hold_train_records_every_log_step_and_one_val_record_per_epoch(single_run: Path) -> None:
    train, val = _records(single_run, "train"), _records(single_run, "val")
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12] and [r["epoch"] for r in val] == [0, 1]
    assert {"loss", "lr", "images_per_s", "prelu_slope/features.act1", "grad_norm/features.conv1"} <= set(
        train[0]
    )
    assert 0 <= val[0]["val_top1_error"] <= 100 and val[0]["val_top5_error"] <= val[0]["val_top1_error"]


@pytest.mark.ddp
def test_an_offline_wandb_run_lives_in_the_run_directory(single_run: Path) -> None:
    assert list((single_run / "wandb").glob("offline-run-*"))
    assert "wandb sync" in (single_run / "train.log").read_text()


@pytest.mark.ddp
def test_best_k_files_are_the_ones_last_pt_lists(single_run: Path) -> None:
    best_files = sorted(p.name for p in single_run.glob("best-*.pt"))
    assert best_files == sorted(
        e["file"] for e in Checkpoint.load(single_run / "last.pt").train_state["best"]
    )
    assert len(best_files) == 2  # both epochs, and last.pt lists the newest entry too


@pytest.mark.ddp
def test_a_resumed_run_logs_no_step_twice(killed_and_resumed_run: Path) -> None:
    steps = [r["step"] for r in _records(killed_and_resumed_run, "train")]
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10, 12]


@pytest.mark.ddp
def test_every_rank_writes_into_one_run_directory(ddp_runs: dict[str, Path]) -> None:
    two = ddp_runs["two_proc"]
    assert sorted(p.name for p in two.parent.iterdir()) == ["one_proc", "two_killed", "two_proc"]
    assert (two / "last.pt").exists() and (two / ".hydra" / "config.yaml").exists()


@pytest.mark.ddp
def test_checkpoints_are_readable_as_the_umask_allows(single_run: Path) -> None:
    assert (single_run / "last.pt").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current


@pytest.mark.slow
def test_nan_loss_stops_the_run_naming_the_step(tmp_path: Path) -> None:
    result = run_train(
        tmp_path, ["optim.lr=1e12", "train.checkpoint_every_steps=2", "model.dropout=0.0"], check=False
    )
    assert result.returncode != 0
    # Step 1's loss is finite; its update blows the weights up, so step 2's loss is not. The check at step 2
    # comes before step 2's checkpoint: no non-finite state is ever saved.
    assert "NaN or Inf at global step 2 " in result.stderr and "resume=auto" in result.stderr
    assert not (tmp_path / "last.pt").exists()
    # Before the first checkpoint: no claim that last.pt holds anything.
    assert "no checkpoint was saved yet" in result.stderr and "still holds" not in result.stderr


@pytest.mark.slow
def test_batch_that_does_not_split_over_ranks_is_refused(tmp_path: Path) -> None:
    result = run_train(tmp_path, ["train.batch_size=6", "train.grad_accum_steps=4"], check=False)
    assert result.returncode != 0 and "does not split evenly" in result.stderr
    assert not (tmp_path / "last.pt").exists()


def test_validation_subset_is_fixed_and_split_over_ranks_without_repeats(compose_train) -> None:
    from delving.data.loaders import EvalLoader

    cfg = OmegaConf.to_object(compose_train(TINY_DATA).data)  # 4 classes x 4 val images
    ranks = [EvalLoader(cfg, "val", batch_size=2, rank=r, world_size=2, max_samples=7) for r in (0, 1)]
    chosen = sorted(ranks[0].indices + ranks[1].indices)
    assert len(chosen) == len(set(chosen)) == 7 == ranks[0].num_samples
    assert chosen == sorted(EvalLoader(cfg, "val", batch_size=3, max_samples=7).indices)
    assert chosen != list(range(7))  # a random subset, not the first classes only
    assert sum(len(labels) for r in ranks for _, labels in r) == 7


@pytest.mark.slow
def test_last_pt_is_saved_before_a_validation_that_fails(tmp_path: Path) -> None:
    """A validation that raises (here: every val image unreadable) loses nothing of the epoch's training."""

    root = make_folder_dataset(
        tmp_path / "data", classes=4, train_per_class=12, val_per_class=2, size=(40, 36)
    )
    for image in (root / "val").rglob("*.JPEG"):
        image.write_bytes(b"not a JPEG")
    result = run_train(
        tmp_path / "run", ["data=folder", f"data.root={root}", "data.max_bad_fraction=0"], check=False
    )
    assert result.returncode != 0 and "unreadable" in result.stderr
    state = Checkpoint.load(tmp_path / "run" / "last.pt").train_state
    assert state["epoch"] == 1 and state["global_step"] == 6 and state["val_pending"]


@pytest.mark.slow
def test_fp16_gradient_norms_are_logged_unscaled(tmp_path: Path) -> None:
    """GradScaler multiplies the loss by 65536 at first: logged norms must be the true ones, as under fp32."""
    norms = {}
    for precision in ("fp32", "fp16"):
        run_train(
            tmp_path / precision, [f"train.precision={precision}", "train.epochs=1", "model.dropout=0.0"]
        )
        norms[precision] = _records(tmp_path / precision, "train")[0]["grad_norm/features.conv1"]
    assert norms["fp16"] == pytest.approx(norms["fp32"], rel=0.05)


@pytest.mark.ddp
def test_a_run_resumed_after_its_last_epoch_still_reports_its_validation(
    single_run: Path, tmp_path: Path
) -> None:
    """Stopped after the last epoch's save (e.g. a signal during the final evaluation), then relaunched."""
    shutil.copy(single_run / "last.pt", tmp_path / "last.pt")
    run_train(tmp_path, ["train.checkpoint_every_steps=2"])
    finished = json.loads((tmp_path / "finished.json").read_text())
    assert finished["val_top1_error"] == _records(single_run, "val")[-1]["val_top1_error"]


@pytest.mark.slow
def test_a_run_on_the_training_sets_mean_image_saves_and_resumes(tmp_path: Path) -> None:
    root = make_folder_dataset(
        tmp_path / "data", classes=4, train_per_class=12, val_per_class=2, size=(40, 36)
    )
    data = ["data=folder", f"data.root={root}", *TINY_DATA[-5:]]
    script = Path(__file__).resolve().parents[1] / "scripts" / "compute_mean_image.py"
    made = warm.run([sys.executable, str(script), *data], env=cli_env(), cwd=REPO, timeout=300)
    assert made.returncode == 0 and (root / "mean_image.npy").exists(), made.stderr[-2000:]
    run_train(tmp_path / "run", [*data, "data.normalize=mean_image", "train.epochs=1"])
    assert Checkpoint.load(tmp_path / "run" / "last.pt").pretrained_cfg["normalize"] == "mean_image"


@pytest.mark.ddp
def test_a_log_that_is_not_a_terminal_gets_plain_progress_lines(single_run: Path) -> None:
    lines = re.findall(
        r"epoch (\d)/2 step (\d)/6 \| loss [\d.]+ \| lr [\d.e-]+ \| \d+ img/s \| data wait \d+% \| "
        r"epoch ETA [\d.]+ s \| run ETA [\dms. ]+",
        (single_run / "train.log").read_text(),
    )
    assert [(int(e), int(s)) for e, s in lines] == [(e, s) for e in (0, 1) for s in (2, 4, 6)]


@pytest.mark.slow
def test_a_plain_progress_line_is_also_due_by_the_clock(tmp_path: Path) -> None:
    """log_every_seconds=0: a line at every step, although metrics are written only every 100 steps."""
    run_train(tmp_path, ["logger.log_every_steps=100", "logger.log_every_seconds=0", "train.epochs=1"])
    log_text = (tmp_path / "train.log").read_text()
    assert [int(s) for s in re.findall(r"epoch 0/1 step (\d)/6 \|", log_text)] == [1, 2, 3, 4, 5, 6]
    assert _records(tmp_path, "train") == []
