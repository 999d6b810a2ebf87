"""Who a run is and which process of its launch this is: the bottom of the import graph (nothing of delving).

- LAUNCH_KEYS: the config keys that say where and how a run is launched, logged and evaluated, never what it
  computes. A resumed run may change them, and an unnamed run's folder name leaves them out.
- run_name_from_overrides: the same command always names the same run folder (relaunch, requeue, torchrun),
  a name every command takes back as it is (no "=" or "," for Hydra's grammar to trip on).
- environment_ranks: this process's (rank, world size, local rank) from torchrun's or SLURM's variables.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

# Config keys that say where and how a run is launched, logged and evaluated, never what it computes: a
# resumed run may change them, and an unnamed run's folder name leaves them out (but data.root, see below).
LAUNCH_KEYS = (
    "resume",
    "run_name",
    "start_over",
    "experiment_name",
    "paper_reference",
    "logger",
    "launcher",
    "hydra",
    "paths",  # where run folders are written (and DELVING_RUNS, read when composing)
    "eval",
    "data.root",
    "data.num_workers",
    "data.prefetch_factor",
    "train.device",
    "train.dist_timeout_s",
    "train.final_eval",
    "train.checkpoint_every_steps",
    "train.keep_best",
    "train.requeue_on_usr1",
    "train.compile",
    "train.cudnn_benchmark",
    "train.tf32",  # like autotuning: how float32 math rounds on a GPU, not what it computes
    "train.ddp",  # DDP's bucketing: how gradients travel, not their values
    "init_from",  # only a new run reads it: once the run has its own last.pt, resuming wins
)


def may_change_on_resume(key: str) -> bool:
    """`key` (dotted, e.g. logger.wandb.mode) is one of LAUNCH_KEYS or inside one of them."""
    return any(key == k or key.startswith(k + ".") for k in LAUNCH_KEYS)


def run_name_from_overrides(overrides: list[str]) -> str:
    """The run directory's name when no run_name= is given: the same command always gives the same name.

    The overrides that define the run, sorted, each as key-value, joined by "+" (train.epochs=7 optim.lr=0.1 ->
    optim.lr-0.1+train.epochs-7), readable when short and plain, else shortened with a hash of all of them;
    "default" when there are none. No "=" or ",": the folder can be given back to any command as it is
    (checkpoint=outputs/demo/train.epochs-7), which Hydra's override grammar refuses for "key=value" names.
    Launch-only keys (launcher, resume, logger...) are left out, so a relaunch with resume=auto, another
    launcher or under torchrun meets the same run directory.
    """
    defining = sorted(o for o in overrides if not _is_launch_key(o.lstrip("+~").split("=", 1)[0]))
    if not defining:
        return "default"
    readable = "+".join(override_in_name(o) for o in defining)
    safe = "+".join(re.sub(r"[^A-Za-z0-9._+-]", "_", override_in_name(o)) for o in defining)
    if safe == readable and len(readable) <= 80 and not any("+" in o.lstrip("+") for o in defining):
        return readable
    return f"{safe[:60]}-{hashlib.sha1(','.join(defining).encode()).hexdigest()[:8]}"


def override_in_name(override: str) -> str:
    """How one override is spelled in a run folder's name: train.epochs=7 -> train.epochs-7."""
    return override.replace("=", "-", 1)


def _is_launch_key(key: str) -> bool:
    """Left out of the name: the experiment (already the parent folder) and the keys a resume may change,
    except data.root: two data sets are two runs, though a named run may move to a copy of its data."""
    return key == "experiment" or (key != "data.root" and may_change_on_resume(key))


def _first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list ("gpu[03-05,07],cpu1" -> "gpu03"); scontrol when it is there."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        match = re.match(r"([^\[,]+)(?:\[([^\],-]+))?", nodelist)
        if not match:
            raise ValueError(f"cannot read the first host of SLURM_JOB_NODELIST={nodelist!r}") from None
        return match.group(1) + (match.group(2) or "")


def global_rank(env: dict[str, str] | None = None) -> int:
    """This process's global rank from the launcher's variables (torchrun's RANK, srun's SLURM_PROCID), else 0;
    readable before the rest of the launch is (Hydra's resolvers run before torch.distributed starts)."""
    env = os.environ if env is None else env
    return int(env.get("RANK", env.get("SLURM_PROCID", "0")))


def environment_ranks(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun, else from SLURM (one task per GPU), else (0, 1, 0).

    Under SLURM it also fills MASTER_ADDR/MASTER_PORT when the job script did not.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "MASTER_ADDR" not in env:  # scontrol once, not at every call
            env["MASTER_ADDR"] = _first_slurm_host(env["SLURM_JOB_NODELIST"])
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0
