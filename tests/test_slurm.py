"""A run's life under a real SLURM (`.ci/start_slurm` starts a one-node cluster on this machine).

Two-task CPU jobs of the tiny net, submitted with `scripts/slurm_train.sbatch` and with the submitit
launcher, are signalled mid-run (SIGUSR1: save and requeue; SIGTERM: save and stop, then a resubmission)
and must end bitwise equal to an uninterrupted two-rank run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from helpers.runs import REPO, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env

pytestmark = pytest.mark.slow

SBATCH_SCRIPT = REPO / "scripts" / "slurm_train.sbatch"
ACTIVATE = REPO / ".venv" / "bin" / "activate"
EXPERIMENT = "demo"  # the tiny overrides below replace its model, data and schedule
# One loader worker per rank: SLURM signals every process of a job step, the workers too.
WORKERS = "data.num_workers=1"
SETTINGS = [
    *(WORKERS if item.startswith("data.num_workers=") else item for item in TINY_DATA),
    *TINY_MODEL,
    *TINY_TRAIN,
    "model.dropout=0.0",
    "train.checkpoint_every_steps=2",
]
# The jobs log to wandb offline, as every run does by default: its service process is signalled too.
JOB_SETTINGS = [
    "logger.wandb.mode=offline" if item.startswith("logger.wandb.mode=") else item for item in SETTINGS
]
STEP_SLEEP_S = "0.4"  # 12 steps: about 5 s of training, time to signal mid-run
# Two tasks on the two-CPU node; the script's GPU and node-count lines are overridden. More than 5 minutes:
# the script's --signal=USR1@300 would otherwise arrive at once.
CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10"]
JOB_TIMEOUT_S = 120
T = TypeVar("T")


def _slurm_unavailable() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "sinfo not found"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t %c"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "controller not responding (sinfo timed out)"
    if states.returncode != 0:
        return f"controller not responding ({states.stderr.strip()})"
    up = [line.split() for line in states.stdout.splitlines() if re.match(r"(idle|mix|alloc|comp)", line)]
    if not any(int(cpus) >= 2 for _, cpus in up):
        return f"no node with 2 CPUs up (sinfo: {states.stdout.strip() or 'no nodes'})"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(f"no SLURM: {reason}; .ci/start_slurm starts one")


def job_env(run_name: str, **extra: str) -> dict[str, str]:
    return cli_env(
        EXPERIMENT=EXPERIMENT,
        RUN_NAME=run_name,
        ACTIVATE=str(ACTIVATE),
        DELVING_STEP_SLEEP_S=STEP_SLEEP_S,
        **extra,
    )


def sbatch(workdir: Path, run_name: str) -> str:
    """Submits the real sbatch script from `workdir` (the run lands in workdir/outputs/...); returns the job id."""
    out = subprocess.run(
        ["sbatch", "--parsable", f"--job-name=test-{run_name}", *CPU_JOB, str(SBATCH_SCRIPT), *JOB_SETTINGS],
        capture_output=True, text=True, cwd=workdir, env=job_env(run_name), timeout=30, check=True,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=15
    )
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout)) if out.returncode == 0 else {}


def wait_for(
    condition: Callable[[], T], what: str, timeout_s: float = JOB_TIMEOUT_S, every_s: float = 0.2
) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_until_done(job_id: str, logs: Path) -> dict[str, str]:
    def ended() -> dict[str, str] | None:
        info = job_info(job_id)
        return (
            info
            if info.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}
            else None
        )

    try:
        return wait_for(ended, f"job {job_id} to end")
    except AssertionError as error:
        subprocess.run(["scancel", job_id], timeout=15)
        raise AssertionError(f"{error}\n{read_logs(logs)}") from None


def read_logs(folder: Path) -> str:
    """The jobs' output files under `folder`: the sbatch script's slurm-*.out, submitit's *_log.out/err."""
    files = sorted({*folder.rglob("slurm-*.out"), *folder.rglob("*_log.out"), *folder.rglob("*_log.err")})
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in files)


def wait_for_checkpoint(run_dir: Path, job_id: str, logs: Path) -> None:
    """Until last.pt is there (step 2 or later of the first epoch); the job must still be running."""

    def saved() -> bool:
        state = job_info(job_id).get("JobState")
        if state not in {"PENDING", "RUNNING", "CONFIGURING"}:
            raise AssertionError(f"job {job_id} is {state} before its first checkpoint\n{read_logs(logs)}")
        return (run_dir / "last.pt").is_file()

    wait_for(saved, f"{run_dir}/last.pt")
    time.sleep(
        1.5 * float(STEP_SLEEP_S)
    )  # into the next step: the stop is saved at a step no checkpoint falls on


def signal_job(job_id: str, signum: signal.Signals) -> float:
    """scancel --signal: without --batch/--full it reaches the tasks of the job steps (the ranks), not the shell."""
    subprocess.run(["scancel", f"--signal={signum.name[3:]}", job_id], check=True, timeout=15)
    return time.monotonic()


def seconds_until_stopped(job_id: str, since: float) -> float:
    wait_for(lambda: job_info(job_id).get("JobState") != "RUNNING", f"job {job_id} to stop running", 60, 0.05)
    return time.monotonic() - since


def model_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_bitwise_equal(run_dir: Path, reference: Path) -> None:
    a, b = model_weights(run_dir), model_weights(reference)
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, (
        f"{len(unequal)} of {len(a)} tensors differ from the uninterrupted run, e.g. {unequal[:3]}"
    )


def assert_finished(run_dir: Path) -> None:
    assert (run_dir / "finished.json").is_file(), (
        f"no finished.json in {run_dir}: {sorted(os.listdir(run_dir))}"
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-rank run of the same settings (torchrun, one thread per rank, no step sleep)."""
    workdir = tmp_path_factory.mktemp("reference")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "delving.train", f"experiment={EXPERIMENT}", "run_name=reference", *SETTINGS]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = workdir / "outputs" / EXPERIMENT / "reference"
    assert_finished(run_dir)
    return run_dir


def test_sbatch_job_signalled_saves_requeues_itself_and_ends_equal(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "outputs" / EXPERIMENT / "requeued"
    job = sbatch(tmp_path, "requeued")
    wait_for_checkpoint(run_dir, job, tmp_path)
    sent = signal_job(job, signal.SIGUSR1)
    stopped_after = seconds_until_stopped(job, sent)

    # Out of COMPLETING: every process of the first run has ended (a rank or helper process that outlives
    # the requeue's SIGTERM holds the job there until SIGKILL, KillWait = 30 s); pending again, or restarted.
    def released() -> bool:
        info = job_info(job)
        return info.get("Restarts") == "1" and info.get("JobState") in {"PENDING", "RUNNING", "COMPLETED"}

    wait_for(released, f"job {job} to be requeued and released", every_s=0.1)
    released_after = time.monotonic() - sent
    info = wait_until_done(job, tmp_path)
    logs = read_logs(tmp_path)
    print(
        f"SIGUSR1 -> job requeued after {stopped_after:.1f} s, its processes gone after {released_after:.1f} s; "
        f"job {job}: {info.get('JobState')}"
    )
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", logs
    assert info.get("Restarts") == "1", (
        f"the job was not requeued once: Restarts={info.get('Restarts')}\n{logs}"
    )
    assert "(restart 1)" in logs, logs  # the requeued job ran the script again, appending to the same log
    assert "resumed from" in logs, logs
    assert stopped_after < 10
    assert released_after < 20, logs
    assert_finished(run_dir)
    assert_bitwise_equal(run_dir, reference)


def test_sbatch_job_stopped_by_sigterm_then_resubmitted_ends_equal(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "outputs" / EXPERIMENT / "resubmitted"
    first = sbatch(tmp_path, "resubmitted")
    wait_for_checkpoint(run_dir, first, tmp_path)
    sent = signal_job(first, signal.SIGTERM)
    stopped_after = seconds_until_stopped(first, sent)
    info = wait_until_done(first, tmp_path)
    print(f"SIGTERM -> job stopped running after {stopped_after:.1f} s; job {first}: {info.get('JobState')}")
    # 75 from every rank: not 143 or 137 (a rank killed on its way out by the SIGTERM that srun's
    # --kill-on-bad-exit sends when the first rank exits, or hung until SIGKILL), not 1 (a loader worker
    # or the wandb service killed by the signal meant for the rank).
    assert info.get("ExitCode") == "75:0", (
        f"{info.get('JobState')} {info.get('ExitCode')}\n{read_logs(tmp_path)}"
    )
    assert stopped_after < 20
    assert info.get("Restarts") == "0"
    assert not (run_dir / "finished.json").exists()

    second = sbatch(tmp_path, "resubmitted")  # a new job id, the same RUN_NAME
    assert second != first
    info = wait_until_done(second, tmp_path)
    logs = read_logs(tmp_path)
    assert info.get("JobState") == "COMPLETED", logs
    assert "resumed from" in logs, logs
    assert_finished(run_dir)
    assert_bitwise_equal(run_dir, reference)


def test_submitit_launcher_job_signalled_requeues_and_ends_equal(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "outputs" / EXPERIMENT / "submitit"
    name = f"test-submitit-{os.getpid()}"
    command = [
        str(REPO / ".venv" / "bin" / "delving-train"), "-m", "launcher=slurm", f"experiment={EXPERIMENT}",
        "run_name=submitit", *JOB_SETTINGS, f"hydra.launcher.name={name}", "hydra.launcher.nodes=1",
        "hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
    ]  # fmt: skip
    log_path = tmp_path / "submit.log"
    with open(log_path, "w") as log:
        # Blocks until the job writes its result (submitit polls); here it runs in the background.
        submitter = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            env=cli_env(DELVING_STEP_SLEEP_S=STEP_SLEEP_S),
        )  # fmt: skip
    try:

        def job_id() -> str | None:
            out = subprocess.run(
                ["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=15
            )
            if submitter.poll() is not None:
                raise AssertionError(
                    f"delving-train -m exited {submitter.returncode}:\n{log_path.read_text()}"
                )
            return out.stdout.split()[0] if out.stdout.split() else None

        job = wait_for(job_id, f"the submitit job {name}")
        submitit_logs = tmp_path / "outputs" / EXPERIMENT / ".submitit"
        wait_for_checkpoint(run_dir, job, submitit_logs)
        sent = signal_job(job, signal.SIGUSR1)
        stopped_after = seconds_until_stopped(job, sent)
        returncode = submitter.wait(timeout=JOB_TIMEOUT_S)
        info = job_info(job)
        print(
            f"submitit, SIGUSR1 -> job stopped running after {stopped_after:.1f} s; job {job}: {info.get('JobState')}"
        )
        assert returncode == 0, log_path.read_text()[-4000:]
        assert info.get("Restarts") == "1", f"Restarts={info.get('Restarts')}\n{read_logs(submitit_logs)}"
    finally:
        if submitter.poll() is None:
            submitter.kill()
            subprocess.run(["scancel", "-n", name], timeout=15)
    assert_finished(run_dir)
    assert_bitwise_equal(run_dir, reference)
    # What configs/launcher/slurm.yaml must give every submitit job: requeue allowed (else `scontrol requeue`
    # is refused where JobRequeue=0), the pre-timeout signal the trainer handles (submitit's default USR2
    # handler exits rank 0 mid-step and leaves the other ranks in a collective), srun's cpus per task.
    script = "\n".join(p.read_text() for p in submitit_logs.rglob("*_submission.sh"))
    missing = [
        line
        for line in ("#SBATCH --requeue", "#SBATCH --signal=USR1@", "SRUN_CPUS_PER_TASK=")
        if line not in script
    ]
    assert not missing, f"the submitit job script lacks {missing}:\n{script}"
