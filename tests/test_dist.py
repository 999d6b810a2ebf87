"""Ranks, world size and the master address from torchrun's or SLURM's variables; each rank's GPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from delving.dist import pick_device
from delving.errors import UserError
from delving.run_identity import environment_ranks


def test_slurm_variables_give_rank_world_size_and_master() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[07-08]"}  # fmt: skip
    assert environment_ranks(env) == (5, 16, 1)
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(20000 + 4242)
    assert environment_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}) == (3, 4, 3)
    assert environment_ranks({}) == (0, 1, 0)


def _visible_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_each_local_rank_gets_its_own_gpu_and_a_rank_past_the_visible_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _visible_gpus(monkeypatch, 4)
    assert [pick_device("auto", r) for r in range(4)] == [torch.device(f"cuda:{r}") for r in range(4)]
    assert pick_device("cuda", 2) == torch.device("cuda:2") and pick_device("cuda:1", 3) == torch.device(
        "cuda:1"
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    with pytest.raises(UserError) as error:  # torchrun --nproc_per_node=8 on 4 GPUs: not 4 ranks on cuda:0
        pick_device("auto", 5)
    message = str(error.value)
    assert "\n" not in message
    assert "local rank 5" in message and "sees 4 GPU(s)" in message and "--nproc_per_node=4" in message


def test_one_visible_gpu_is_the_ranks_own_whatever_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    _visible_gpus(monkeypatch, 1)  # one GPU per task (a device cgroup or CUDA_VISIBLE_DEVICES per task)
    assert pick_device("auto", 5) == torch.device("cuda:0")
    _visible_gpus(monkeypatch, 0)
    assert pick_device("auto", 5) == torch.device("cpu")


SBATCH_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_train.sbatch"


def _run_sbatch_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The batch script under bash with stand-in scontrol and srun (srun prints the socket variables)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    (bin_dir / "srun").write_text('#!/bin/sh\necho "gloo=$GLOO_SOCKET_IFNAME nccl=$NCCL_SOCKET_IFNAME"\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    job = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS": "16", "ACTIVATE": ""}
    base = {k: v for k, v in os.environ.items() if not k.endswith("SOCKET_IFNAME")}
    return subprocess.run(
        ["bash", str(SBATCH_SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", **job, **env},
    )  # fmt: skip


def test_the_sbatch_script_gives_tasks_the_nodes_gpus_and_refuses_a_loopback_master(tmp_path: Path) -> None:
    text = SBATCH_SCRIPT.read_text()
    assert "#SBATCH --gpus-per-node=8" in text and "#SBATCH --ntasks-per-node=8" in text
    assert "#SBATCH --gpus-per-task" not in text  # no per-task device cgroups: NCCL keeps peer-to-peer
    refused = _run_sbatch_script(tmp_path, SLURM_JOB_NUM_NODES="2")
    assert refused.returncode == 2 and "gloo=" not in refused.stdout  # srun never started
    assert "resolves to loopback" in refused.stderr and "SOCKET_IFNAME" in refused.stderr
    named = _run_sbatch_script(tmp_path, SLURM_JOB_NUM_NODES="2", SOCKET_IFNAME="ib0")
    assert named.returncode == 0 and "gloo=ib0 nccl=ib0" in named.stdout, named.stderr
    one_node = _run_sbatch_script(tmp_path, SLURM_JOB_NUM_NODES="1")
    assert one_node.returncode == 0, one_node.stderr
