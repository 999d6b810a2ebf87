"""A run's life: the same command finds its run, one live run per folder, signals save and stop exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import warm
from helpers.data import make_folder_dataset
from helpers.launch import start_train, wait_for_step
from helpers.runs import EQUAL_RUN, REPO, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env, run_train

from delving.checkpoint import Checkpoint
from delving.engine.signals import EXIT_STOPPED
from delving.run_identity import run_name_from_overrides


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return Checkpoint.load(path).model


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"


def test_run_name_ignores_order_and_launch_keys_but_not_the_recipe() -> None:
    name = run_name_from_overrides(["seed=1", "optim.lr=0.1", "experiment=demo"])
    assert name == "optim.lr-0.1+seed-1"
    relaunch = ["resume=auto", "optim.lr=0.1", "launcher=slurm", "seed=1", "logger.wandb.mode=disabled"]
    assert run_name_from_overrides(relaunch) == name
    assert run_name_from_overrides(["seed=2", "optim.lr=0.1"]) != name
    assert run_name_from_overrides(["experiment=demo", "train.device=cpu"]) == "default"
    odd = run_name_from_overrides(["data.root=/datasets/imagenet"])
    assert "/" not in odd and odd != run_name_from_overrides(["data.root=/datasets/imagenet2"])
    # A "+" inside a value would read as two overrides: such a name carries the hash of all of them.
    assert run_name_from_overrides(["a=b+c"]) != run_name_from_overrides(["a=b", "c"])


# What the default naming makes of typical commands: short and readable, lists, paths, long ones (hashed).
NAMED_COMMANDS = [
    ["train.epochs=1"],
    ["train.epochs=7", "optim.lr=-0.1"],
    ["model.spp_levels=[3,2,1]", "+model.extra=1"],
    [
        "data=folder",
        "data.root=/data/my photos",
        "data.crop_size=24",
        "model.num_classes=3",
        "train.epochs=9",
    ],
    ["~model.dropout", "optim.lr=1e-3"],
]


@pytest.mark.parametrize("overrides", NAMED_COMMANDS)
def test_every_default_run_name_can_be_given_back_to_a_path_taking_key(overrides: list[str]) -> None:
    """Hydra's grammar refuses "=" and "," in a value: outputs/demo/train.epochs=1 once failed as checkpoint=."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    name = run_name_from_overrides(overrides)
    parser = OverridesParser.create()
    path = f"outputs/demo/{name}"
    for key in ("checkpoint", "init_from", "hydra.run.dir"):
        assert parser.parse_override(f"{key}={path}/last.pt").value() == f"{path}/last.pt"
    assert parser.parse_override(f"runs=[{path},{path}]").value() == [path, path]


@pytest.mark.slow
def test_the_same_command_finds_its_run_and_a_finished_run_is_not_redone(tmp_path: Path) -> None:
    """Relaunched from the same folder without hydra.run.dir: the same directory, which says it is finished in
    words (not a crash); its folder name is typed back to delving-eval as it is; train.epochs=2 alone is a new
    run and says so, run_name= extends it and says which predictions stay from the old checkpoint."""
    command = [
        sys.executable, "-m", "delving.train", "experiment=demo", "train.epochs=1", "train.batch_size=8",
        "data.synthetic_classes=4", "data.synthetic_train_per_class=4", "data.synthetic_val_per_class=2",
        "model.num_classes=4", "model.width=0.0625", "eval.limit=4", "logger.wandb.mode=disabled",
    ]  # fmt: skip
    first = warm.run(command, env=cli_env(), cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "demo").iterdir())
    assert (
        len(runs) == 1
        and (runs[0] / "finished.json").exists()
        and (runs[0] / "predictions-dense.npz").exists()
    )
    assert "a new run in" not in first.stderr + first.stdout  # no finished run beside it
    predictions_time = (runs[0] / "predictions-dense.npz").stat().st_mtime_ns
    again = warm.run([*command, "resume=auto"], env=cli_env(), cwd=tmp_path, timeout=300)
    said = again.stdout + again.stderr
    assert again.returncode == 0 and "nothing to do" in said
    assert "no longer alive" not in said  # a clean end released its lock
    assert re.search(r"\(val top-1 error \d+\.\d\d %; final evaluation dense: top-1 \d+\.\d\d %, top-5 \d+\.\d\d % "
                     r"on 4 images\); nothing to do", said), said[-2000:]  # fmt: skip
    assert list((tmp_path / "outputs" / "demo").iterdir()) == runs
    assert (runs[0] / "predictions-dense.npz").stat().st_mtime_ns == predictions_time  # no second final eval

    # The folder as the default naming made it, typed back as it is (the console script, a user's shell words).
    folder = f"outputs/demo/{runs[0].name}"
    evaluated = warm.run(
        [str(Path(sys.executable).parent / "delving-eval"), f"checkpoint={folder}", "eval=center", "eval.limit=4"],
        cwd=tmp_path, timeout=300, env=cli_env(),
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (center,) = runs[0].glob("predictions-center*.npz")

    longer = [*command[:4], "train.epochs=2", *command[5:]]
    new_run = warm.run(longer, env=cli_env(), cwd=tmp_path, timeout=300)
    assert new_run.returncode == 0, new_run.stderr[-3000:]
    assert f"so it does not extend the finished run {runs[0].name} of" in new_run.stderr + new_run.stdout
    assert f"run_name={runs[0].name} and the same overrides" in new_run.stderr + new_run.stdout
    assert len(list((tmp_path / "outputs" / "demo").iterdir())) == 2

    extended = warm.run([*longer, f"run_name={runs[0].name}"], env=cli_env(), cwd=tmp_path, timeout=300)
    said = extended.stdout + extended.stderr
    assert extended.returncode == 0 and "train.epochs=2 extends it" in said, said[-3000:]
    assert f"{center.name} came from the checkpoint before this extension" in said
    assert "predictions-dense.npz came" not in said  # the final evaluation rewrites that one
    assert (runs[0] / "predictions-dense.npz").stat().st_mtime_ns > predictions_time


@pytest.mark.slow
def test_a_live_run_holds_its_directory_and_a_dead_ones_lock_is_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom delving.engine.run_dir import RunDirectory\n"
         f"run = RunDirectory({str(tmp_path)!r}); run.lock(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = run_train(tmp_path, ["train.epochs=1"], check=False)
        assert refused.returncode != 0
        assert f"in use by a live run (host {os.uname().nodename} pid {holder.pid}" in refused.stderr
        assert not (tmp_path / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: its lock is stale, and the next run takes it over, saying so.
    taken = run_train(tmp_path, ["train.epochs=1"])
    assert (tmp_path / "last.pt").exists()
    assert (
        f"took over the lock of a run that is no longer alive (host {os.uname().nodename} pid {holder.pid}"
        in (taken.stdout + taken.stderr)
    )
    assert (tmp_path / ".lock").read_text().startswith("released ")  # this run ended by itself


@pytest.mark.slow
def test_resume_null_refuses_to_mix_runs_and_start_over_moves_the_old_one_aside(tmp_path: Path) -> None:
    run_train(tmp_path, ["train.epochs=1"])
    old = (tmp_path / "last.pt").read_bytes()
    refused = run_train(tmp_path, ["train.epochs=1", "resume=null"], check=False)
    assert refused.returncode != 0 and "start_over=true" in refused.stderr
    assert (tmp_path / "last.pt").read_bytes() == old
    run_train(tmp_path, ["train.epochs=1", "resume=null", "start_over=true"])
    (previous,) = (tmp_path / "previous").iterdir()
    assert (previous / "last.pt").read_bytes() == old and (previous / "metrics.jsonl").exists()
    assert (tmp_path / "last.pt").exists()


def _stop_and_relaunch(
    run_dir: Path, overrides: list[str], sig: signal.Signals, nproc: int, target: str = "workers"
) -> float:
    """Starts a slowed run, signals it mid-epoch, checks the exact stop; returns seconds from signal to exit."""
    process = start_train([*overrides, f"hydra.run.dir={run_dir}"], nproc=nproc, DELVING_STEP_SLEEP_S="0.4")
    wait_for_step(run_dir, 2, process)
    sent = time.monotonic()
    process.send_signal(sig)
    output = process.communicate(timeout=120)[0]
    seconds = time.monotonic() - sent
    print(f"{sig.name} to exit: {seconds:.2f} s ({nproc} process(es))")  # shown with pytest -s
    assert process.returncode == (EXIT_STOPPED if nproc == 1 else 1), output[-3000:]
    assert f"stopped on {sig.name}" in output
    state = Checkpoint.load(run_dir / "last.pt").train_state
    assert 2 <= state["global_step"] < 12 and not (run_dir / "finished.json").exists()
    # A torn metrics line and a temp file from a killed checkpoint write: both handled by the relaunch.
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"type": "train", "st')
    (run_dir / ".last.pt.999.deadbeef.tmp").write_bytes(b"x" * 100)
    relaunched = run_train(run_dir, overrides, nproc=nproc)
    assert "dropped a torn last line" in relaunched.stdout + relaunched.stderr
    assert not list(run_dir.glob(".*.tmp"))
    return seconds


@pytest.mark.ddp
def test_sigusr1_saves_exits_75_and_the_relaunch_ends_bitwise_equal(single_run: Path, tmp_path: Path) -> None:
    seconds = _stop_and_relaunch(tmp_path, ["train.checkpoint_every_steps=2"], signal.SIGUSR1, nproc=1)
    assert seconds < 20
    _assert_bitwise_equal(tmp_path / "last.pt", single_run / "last.pt")  # dropout on: RNG restored too


@pytest.mark.ddp
def test_sigterm_to_torchrun_stops_both_ranks_exactly(ddp_runs: dict[str, Path], tmp_path: Path) -> None:
    seconds = _stop_and_relaunch(tmp_path, EQUAL_RUN, signal.SIGTERM, nproc=2)
    assert seconds < 30
    _assert_bitwise_equal(tmp_path / "last.pt", ddp_runs["two_proc"] / "last.pt")


def _folder_data_with_one_corrupt_image(root: Path) -> Path:
    make_folder_dataset(root, classes=4, train_per_class=12, val_per_class=2, size=(40, 36))
    (root / "train" / "c2" / "005.JPEG").write_bytes(b"not a JPEG")
    return root


@pytest.mark.ddp
def test_one_ranks_error_stops_every_rank_without_a_supervisor(tmp_path: Path) -> None:
    """Two ranks started by hand (as a plain srun starts them: no torchrun to kill the rest). The rank that
    reads the corrupt image fails (no bad image allowed); the other must stop at the same step with its
    message instead of waiting in the gradient all-reduce for the 600 s collective timeout."""
    root = _folder_data_with_one_corrupt_image(tmp_path / "data")
    data = [f"data.root={root}", "data.max_bad_fraction=0", *TINY_DATA[-5:]]  # crop, scales, workers
    procs = []
    for rank in (0, 1):
        env = {**cli_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29731"}  # fmt: skip
        command = [sys.executable, "-m", "delving.train", "data=folder", *data, *TINY_MODEL, *TINY_TRAIN,
                   "train.dist_timeout_s=600", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
        procs.append(warm.start(command, env, REPO))  # forked warm, as `python -m` typed twice
    started = time.monotonic()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert time.monotonic() - started < 60, outputs  # not the 600 s collective timeout
    assert all(p.returncode != 0 for p in procs), outputs
    stopped = [o for o in outputs if "failed, so every rank stopped" in o]
    assert len(stopped) == 1 and "unreadable" in stopped[0], outputs
