"""Ranks, world size and the master address from torchrun's or SLURM's variables."""

from __future__ import annotations

from delving.run_identity import environment_ranks


def test_slurm_variables_give_rank_world_size_and_master() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[07-08]"}  # fmt: skip
    assert environment_ranks(env) == (5, 16, 1)
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(20000 + 4242)
    assert environment_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}) == (3, 4, 3)
    assert environment_ranks({}) == (0, 1, 0)
