"""Stops and refusals of a real `delving-train` process: signals in every phase, a full disk, wrong places."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import warm
from helpers.data import make_folder_dataset, write_jpeg
from helpers.disks import small_disk as mounted_small_disk
from helpers.launch import start_train, train_command, wait_for_step
from helpers.runs import REPO, TINY_DATA, cli_env, run_train

from delving.checkpoint import Checkpoint
from delving.engine.signals import EXIT_STOPPED

VAL_IMAGES = 60


@pytest.fixture(scope="module")
def big_val_images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Tiny training images, 2400x1800 val images: the final evaluation (full-size decodes, eval.draft=false)
    spends its 2-3 s decoding, so a signal lands in the decoder, as it did in the report."""
    root = make_folder_dataset(
        tmp_path_factory.mktemp("big_val"), classes=4, train_per_class=12, val_per_class=0
    )
    big = write_jpeg(root / "big.jpg", 2400, 1800, seed=0)
    for i in range(VAL_IMAGES):
        (root / "val" / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(big, root / "val" / f"c{i % 4}" / f"{i:03d}.JPEG")
    big.unlink()
    return [
        "data=folder", f"data.root={root}", *TINY_DATA[-5:], "train.epochs=1", "train.final_eval=true",
        "eval=center", "eval.scales=[256]",
    ]  # fmt: skip


def _read_until(process: subprocess.Popen | warm.Started, text: str, timeout: float = 120) -> str:
    """The process's output up to the first line holding `text` (it keeps running)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the run ended before {text!r}:\n{''.join(seen)[-4000:]}")
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"no {text!r} within {timeout} s")


@pytest.mark.parametrize("signals", [1, 2], ids=["one_sigterm", "two_quick_sigterms"])
def test_a_stop_during_the_final_evaluation_is_no_bad_image_and_the_relaunch_evaluates_again(
    tmp_path: Path, big_val_images: list[str], signals: int
) -> None:
    process = start_train([*big_val_images, f"hydra.run.dir={tmp_path}"])
    output = _read_until(process, "images to go")  # the final evaluation has started
    time.sleep(0.3)
    for _ in range(signals):
        process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    output += process.communicate(timeout=120)[0]
    assert process.returncode == EXIT_STOPPED, output[-3000:]
    assert "unreadable" not in output and "skipping" not in output, output[-3000:]
    assert "stopped on SIGTERM before the final evaluation ended" in output
    assert not (tmp_path / "finished.json").exists()
    assert not (tmp_path / "predictions-center.npz").exists()

    relaunched = run_train(tmp_path, big_val_images)
    assert "images to go" in relaunched.stdout + relaunched.stderr  # evaluated again, not "nothing to do"
    assert (tmp_path / "finished.json").exists()
    with np.load(tmp_path / "predictions-center.npz") as predictions:
        assert len(predictions["labels"]) == VAL_IMAGES


def _start_in_foreground(run_dir: Path, *overrides: str, step_sleep: str = "0.4") -> warm.Started:
    """delving-train as a terminal's foreground job gets it: its own process group (its loader workers with
    it), SIGINT at its default (a background job, as pytest's may be, starts with SIGINT ignored)."""
    return start_train(
        [*overrides, f"hydra.run.dir={run_dir}"], foreground=True, DELVING_STEP_SLEEP_S=step_sleep
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl_c", "sighup"])
def test_ctrl_c_and_sighup_save_at_the_next_step_and_end_on_their_signal(tmp_path: Path, sig: int) -> None:
    """To the whole process group, as a terminal sends them: the loader workers get the signal too."""
    process = _start_in_foreground(tmp_path, "train.checkpoint_every_steps=100", "data.num_workers=2")
    wait_for_step(tmp_path, 2, process)
    os.killpg(process.pid, sig)
    output = process.communicate(timeout=120)[0]
    # Ended on the signal after the save (a shell shows 130 / 129, and a loop around the command stops).
    assert process.returncode == -sig, output[-3000:]
    assert "Traceback" not in output and f"stopped on {signal.Signals(sig).name}" in output, output[-3000:]
    state = Checkpoint.load(tmp_path / "last.pt").train_state
    assert 2 <= state["global_step"] < 12  # saved mid-run, at the step after the signal
    relaunched = run_train(tmp_path, [])
    assert f"resumed from {tmp_path / 'last.pt'}" in relaunched.stdout + relaunched.stderr


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path: Path) -> None:
    process = _start_in_foreground(tmp_path, "train.checkpoint_every_steps=100", step_sleep="4")
    wait_for_step(tmp_path, 2, process)  # then 4 s in the step: the next boundary is far
    process.send_signal(signal.SIGINT)
    time.sleep(1.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert time.monotonic() - sent < 1.5, output[-3000:]
    assert process.returncode == -signal.SIGINT
    assert "received SIGINT again: stopping now, without saving" in output and "stopped on" not in output
    assert "Traceback" not in output and not (tmp_path / "last.pt").exists()


@pytest.mark.slow
def test_resuming_on_data_whose_class_names_differ_is_refused_before_any_step(tmp_path: Path) -> None:
    trained = make_folder_dataset(tmp_path / "data", classes=4, train_per_class=12, val_per_class=2)
    data = ["data=folder", *TINY_DATA[-5:], "train.checkpoint_every_steps=2"]
    run_train(tmp_path / "run", [*data, f"data.root={trained}", "train.epochs=1"])
    renamed = shutil.copytree(trained, tmp_path / "renamed")
    for split in ("train", "val"):
        (renamed / split / "c3").rename(renamed / split / "d3")  # the same count, another name
    before = (tmp_path / "run" / "last.pt").read_bytes()
    refused = run_train(tmp_path / "run", [*data, f"data.root={renamed}"], check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert "the classes of the checkpoint and the data set differ" in line and "['c3']" in line, line
    assert "Traceback" not in refused.stderr and "epoch 1" not in refused.stdout + refused.stderr
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert Checkpoint.load(tmp_path / "run" / "last.pt").classes == ["c0", "c1", "c2", "c3"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB tmpfs (tests/helpers/disks.py)."""
    with mounted_small_disk(tmp_path / "disk", "4m") as disk:
        yield disk


def _fill(disk: Path) -> Path:
    """Takes every free byte of `disk`."""
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_during_training_says_so_in_one_line_and_last_pt_stays_whole(small_disk: Path) -> None:
    run_dir = small_disk / "run"
    process = start_train(
        ["train.checkpoint_every_steps=2", f"hydra.run.dir={run_dir}"], DELVING_STEP_SLEEP_S="0.4"
    )
    wait_for_step(run_dir, 2, process)
    while not (run_dir / "last.pt").exists():
        time.sleep(0.05)
    before = Checkpoint.load(run_dir / "last.pt").train_state["global_step"]
    filler = _fill(small_disk)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 2, output[-3000:]
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert f"the disk at {run_dir} is full: writing " in line, line
    assert "intact" in line and "relaunch the same command (resume=auto)" in line, line
    assert "Traceback" not in output and "unexpected pos" not in output, output[-3000:]
    assert Checkpoint.load(run_dir / "last.pt").train_state["global_step"] >= before
    assert not list(run_dir.glob(".*.tmp"))
    filler.unlink()
    relaunched = run_train(run_dir, ["train.checkpoint_every_steps=2"])
    assert "resumed from" in relaunched.stdout + relaunched.stderr
    assert (run_dir / "finished.json").exists()


@pytest.mark.parametrize("kind", ["checkpoint", "predictions", "text"])
def test_a_write_that_fills_the_disk_is_refused_whole_and_named(small_disk: Path, kind: str) -> None:
    import torch

    from delving.io import DiskFullError, atomic_write

    writers = {
        "checkpoint": lambda h: torch.save({"w": torch.zeros(2 << 20)}, h),  # RuntimeError, no errno
        "predictions": lambda h: np.savez(h, probs=np.zeros(2 << 20)),
        "text": lambda h: h.write(b"x" * (8 << 20)),
    }
    target = small_disk / f"file.{kind}"
    target.write_bytes(b"previous")
    with pytest.raises(DiskFullError, match=f"the disk at {small_disk} is full: writing file.{kind} failed"):
        atomic_write(target, writers[kind])
    assert target.read_bytes() == b"previous" and [p.name for p in small_disk.iterdir()] == [target.name]


DROP = "-dac_override,-dac_read_search,-fowner"


def _without_root_rights(command: list[str]) -> list[str]:
    """Root drops the rights that let it write anywhere (it then meets file modes as a user does)."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: cannot drop the rights to meet a read-only folder")
    return ["setpriv", f"--inh-caps={DROP}", f"--bounding-set={DROP}", *command]


def _someone_elses(folder: Path, mode: int = 0o755) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)  # nobody
    folder.chmod(mode)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["parent_read_only", "run_folder_of_another_user", "train_log_of_another_user", "cache_read_only",
             "cache_is_a_file"],
)  # fmt: skip
def test_places_that_cannot_be_written_are_refused_in_one_line_before_any_work(
    tmp_path: Path, case: str
) -> None:
    run_dir, env = tmp_path / "runs" / "run", cli_env(DELVING_DATA_CACHE=str(tmp_path / "cache"))
    if case == "parent_read_only":
        _someone_elses(tmp_path / "runs")
        expected = f"{tmp_path / 'runs'}, which belongs to nobody, cannot be written by"
    elif case == "run_folder_of_another_user":
        _someone_elses(run_dir)
        expected = f"{run_dir}, which belongs to nobody, cannot be written by"
    elif case == "train_log_of_another_user":
        _someone_elses(run_dir, 0o777)
        log_file = run_dir / "train.log"
        log_file.write_text("an old run's log\n")
        if os.geteuid() == 0:
            os.chown(log_file, 65534, 65534)
        log_file.chmod(0o644)
        expected = f"{log_file}, which belongs to nobody, cannot be written by"
    elif case == "cache_read_only":
        _someone_elses(tmp_path / "cache")
        expected = "data=synthetic is generated on first use into"
    else:
        (tmp_path / "cache").write_text("not a folder")
        expected = f"{tmp_path / 'cache'} is a file, not a folder: set DELVING_DATA_CACHE"
    command = _without_root_rights(train_command([f"hydra.run.dir={run_dir}"]))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert expected in line, line
    assert "Traceback" not in result.stderr + result.stdout
    if case.startswith("cache"):
        assert not (tmp_path / "runs").exists()  # refused before Hydra made the run folder
    else:
        assert not (run_dir / ".hydra").exists() and not (run_dir / "last.pt").exists()


@pytest.mark.slow
def test_a_command_that_fails_its_checks_leaves_no_run_folder(tmp_path: Path) -> None:
    command = train_command(["optim.lr=-1"])  # no hydra.run.dir: Hydra's own outputs/<experiment>/<run>
    result = warm.run(command, cwd=tmp_path, env=cli_env(), timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: optim.lr=-1"), result.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_class_count_mismatch_names_where_the_count_came_from(tmp_path: Path) -> None:
    def refusal(*overrides: str) -> str:
        command = [sys.executable, "-m", "delving.train", "experiment=demo", "data.synthetic_classes=20",
                   "data.synthetic_train_per_class=1", "train.device=cpu", f"hydra.run.dir={tmp_path}", *overrides]  # fmt: skip
        result = warm.run(command, env=cli_env(), cwd=REPO, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        return result.stderr.strip()

    assert refusal("init_from=x.pt") == (
        "error: model.num_classes=100 (set by experiment=demo) but data=synthetic has 20 classes: add "
        "model.num_classes=20 (or model.num_classes=null: the data set's count)"
    )
    assert "(set by the command line)" in refusal("model.num_classes=30")
    # The advice works: the count check passes, and the next check (20 images, batch 64) speaks.
    assert "is more than the 20 training images" in refusal("model.num_classes=null")


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [c for child in map(int, children.split()) for c in (child, *_descendants(child))]


@pytest.mark.slow
def test_a_stop_that_also_ends_wandbs_service_ends_quietly(tmp_path: Path) -> None:
    """SIGTERM to every process of the run, as SLURM's scancel sends it: wandb's service dies with the run."""
    process = start_train(
        ["logger.wandb.mode=offline", f"hydra.run.dir={tmp_path}"], DELVING_STEP_SLEEP_S="0.4"
    )
    wait_for_step(tmp_path, 2, process)
    everyone = [process.pid, *_descendants(process.pid)]
    assert len(everyone) > 1  # wandb-core (and its system monitor)
    for pid in everyone:
        os.kill(pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == EXIT_STOPPED, output[-3000:]
    assert "Traceback" not in output and "Error executing job" not in output, output[-3000:]
    lines = output.rstrip().splitlines()
    hint = [
        i
        for i, line in enumerate(lines)
        if line.endswith("Relaunch the same command (resume=auto) to continue.")
    ]
    assert hint, output[-3000:]
    # The stop's own lines end it; only wandb's note that its ended service took no more records may follow
    # (whether it is seen before or after depends on when the killed service's socket closes).
    assert all("wandb stopped taking records" in line for line in lines[hint[-1] + 1 :]), output[-3000:]


@pytest.mark.slow
def test_wandb_online_without_a_network_falls_back_to_offline_in_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_train(
        tmp_path, ["logger.wandb.mode=online", "logger.wandb.init_timeout_s=3", "train.epochs=1"],
        env=cli_env(WANDB_API_KEY="0" * 40, WANDB_BASE_URL="http://127.0.0.1:9"),  # a key, no server: no network
    )  # fmt: skip
    assert time.monotonic() - started < 60
    output = result.stdout + result.stderr
    (line,) = [x for x in output.splitlines() if "could not start" in x]
    assert "logger.wandb.mode=online: wandb could not start within logger.wandb.init_timeout_s=3 s" in line
    assert "logging offline instead (set logger.wandb.mode=offline" in line and "Traceback" not in output
    assert list((tmp_path / "wandb").glob("offline-run-*")) and (tmp_path / "finished.json").exists()


@pytest.mark.slow
def test_the_synthetic_sets_first_use_says_what_takes_the_time(tmp_path: Path) -> None:
    env = cli_env(DELVING_DATA_CACHE=str(tmp_path / "cache"))
    first = run_train(tmp_path / "first", ["train.epochs=1"], env=env)
    lines = [x for x in (first.stdout + first.stderr).splitlines() if "synthetic data set" in x]
    assert f"generating the synthetic data set into {tmp_path / 'cache'}" in lines[0], lines
    assert "synthetic data set, generated on first use (later runs reuse it): 64 images in" in lines[-1], (
        lines
    )
    again = run_train(tmp_path / "again", ["train.epochs=1"], env=env)
    assert "synthetic data set" not in again.stdout + again.stderr


@pytest.mark.ddp
def test_ctrl_c_to_torchrun_and_its_ranks_saves_once_and_the_relaunch_continues(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches torchrun and both ranks; torchrun forwards it to the ranks at once, which
    must not count as a second press (that would stop them without saving)."""
    overrides = ["train.checkpoint_every_steps=100", "model.dropout=0.0", f"hydra.run.dir={tmp_path}"]
    process = start_train(overrides, nproc=2, foreground=True, DELVING_STEP_SLEEP_S="0.4")  # torchrun: cold
    wait_for_step(tmp_path, 2, process)
    os.killpg(process.pid, signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert "stopped on SIGINT" in output and "stopping now, without saving" not in output, output[-4000:]
    assert 2 <= Checkpoint.load(tmp_path / "last.pt").train_state["global_step"] < 12
    relaunched = run_train(tmp_path, ["model.dropout=0.0"], nproc=2)
    assert "resumed from" in relaunched.stdout + relaunched.stderr
