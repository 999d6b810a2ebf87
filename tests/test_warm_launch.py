"""The tests' warm launcher (helpers/warm.py) runs `python -m delving.train` and the console scripts as a new
interpreter does: the same weights bit for bit, the same exit codes, messages and folders, and the arithmetic
its own environment asks for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import warm
from helpers.launch import wait_for_step
from helpers.runs import EQUAL_RUN, REPO, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env

from delving.checkpoint import Checkpoint

COMMAND = [sys.executable, "-m", "delving.train", *TINY_DATA, *TINY_MODEL, *TINY_TRAIN, *EQUAL_RUN]
SCRIPT = str(Path(sys.executable).parent / "delving-train")
pytestmark = pytest.mark.slow  # each test starts new interpreters beside the warm runs it checks


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return Checkpoint.load(run / "last.pt").model


def test_a_warm_run_equals_a_new_interpreters_run_bitwise(tmp_path: Path) -> None:
    cold = subprocess.run(
        [*COMMAND, f"hydra.run.dir={tmp_path / 'cold'}"], capture_output=True, text=True, env=cli_env(),
        cwd=REPO, timeout=300,
    )  # fmt: skip
    hot = warm.run([*COMMAND, f"hydra.run.dir={tmp_path / 'warm'}"], env=cli_env(), cwd=REPO, timeout=300)
    script = warm.run(
        [SCRIPT, *COMMAND[3:], "hydra.run.dir=script"], env=cli_env(), cwd=tmp_path, timeout=300
    )
    assert warm.has_server(cli_env())
    assert cold.returncode == hot.returncode == script.returncode == 0, (
        hot.stderr[-3000:] + script.stderr[-3000:]
    )
    cold_weights = _weights(tmp_path / "cold")
    for run in ("warm", "script"):
        warm_weights = _weights(tmp_path / run)
        assert cold_weights.keys() == warm_weights.keys()
        assert all(torch.equal(cold_weights[k], warm_weights[k]) for k in cold_weights), run

    # The same log, but for the run folder and the rates and times.
    def losses(result: subprocess.CompletedProcess) -> list[str]:
        lines = (result.stdout + result.stderr).splitlines()
        return [line.split("| loss ")[1][:6] for line in lines if "| loss " in line]

    assert losses(hot) and losses(hot) == losses(cold)


def test_two_warm_ranks_equal_torchruns_two_ranks_bitwise_and_fail_together(tmp_path: Path) -> None:
    """A torchrun command run through warm.run: two forked ranks with torchrun's variables, the same weights
    as torchrun's own ranks; one rank's death ends the other, with torchrun's exit code 1."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*torchrun, *COMMAND[1:], "train.epochs=1"]
    cold = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path / 'cold'}"], capture_output=True, text=True, env=cli_env(),
        cwd=REPO, timeout=300,
    )  # fmt: skip
    hot = warm.run([*command, f"hydra.run.dir={tmp_path / 'warm'}"], env=cli_env(), cwd=REPO, timeout=300)
    assert cold.returncode == hot.returncode == 0, cold.stderr[-3000:] + hot.stderr[-3000:]
    assert "over 2 rank(s)" in hot.stdout + hot.stderr, hot.stderr[-3000:]
    cold_weights, warm_weights = _weights(tmp_path / "cold"), _weights(tmp_path / "warm")
    assert cold_weights.keys() == warm_weights.keys()
    assert all(torch.equal(cold_weights[k], warm_weights[k]) for k in cold_weights)
    killed = warm.run(
        [*command, f"hydra.run.dir={tmp_path / 'killed'}"], env=cli_env(DELVING_KILL_AT_STEP="3"), cwd=REPO,
        timeout=300,
    )  # fmt: skip
    assert killed.returncode == 1, killed.stderr[-3000:]  # both ranks SIGKILLed themselves: torchrun's code
    # One rank fails, the other would wait (in its next all-reduce, until the timeout): it gets SIGTERM, as
    # torchrun's agent sends it.
    (tmp_path / "fails.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "waits.py").write_text("import time\ntime.sleep(300)\n")
    started = time.monotonic()
    ranks = warm.forked(
        [[str(tmp_path / "waits.py")], [str(tmp_path / "fails.py")]], [cli_env(), cli_env()], tmp_path, 120,
        together=True,
    )  # fmt: skip
    assert ranks.returncode == 1 and time.monotonic() - started < 30
    # A rank that ignores SIGTERM gets SIGKILL after the grace time (its partner fails once it has started).
    (tmp_path / "fails_later.py").write_text("import time\ntime.sleep(1)\nraise SystemExit(3)\n")
    (tmp_path / "stays.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)\n"
    )
    started = time.monotonic()
    ranks = warm.forked(
        [[str(tmp_path / "stays.py")], [str(tmp_path / "fails_later.py")]], [cli_env(), cli_env()], tmp_path, 120,
        together=True, grace_s=2,
    )  # fmt: skip
    assert ranks.returncode == 1 and 2 <= time.monotonic() - started < 30


def test_warm_runs_keep_their_exit_codes_and_processes(tmp_path: Path) -> None:
    killed = warm.run(
        [*COMMAND, f"hydra.run.dir={tmp_path / 'killed'}"], env=cli_env(DELVING_KILL_AT_STEP="3"), cwd=REPO,
        timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9  # SIGKILLed itself after step 3, as test runs do
    refused = warm.run([*COMMAND, "model.widht=1"], env=cli_env(), cwd=tmp_path, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: model.widht is not a key")
    # A console script's refusal after its imports (no data): the same code and message as a new interpreter's.
    bare = [str(Path(sys.executable).parent / "delving-eval"), "checkpoint=missing.pt"]
    cold = subprocess.run(bare, capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    hot = warm.run(bare, env=cli_env(), cwd=tmp_path, timeout=300)
    assert hot.returncode == cold.returncode == 2 and hot.stderr == cold.stderr, hot.stderr + cold.stderr
    # A relative run folder is the given folder's, as for a command typed there.
    relative = warm.run(
        [*COMMAND, "hydra.run.dir=here", "train.epochs=1"], env=cli_env(), cwd=tmp_path, timeout=300
    )
    assert relative.returncode == 0 and (tmp_path / "here" / "last.pt").exists()


def test_a_run_gets_a_server_started_in_its_own_environment(tmp_path: Path) -> None:
    """torch fixes its kernel ISA at its first op: a run under another cap than the first server's is forked
    from a server of its own and gets that cap. More than one thread makes torch start threads at import,
    which a fork cannot copy: such a run starts a new interpreter, and gets its threads."""
    envs = {
        "plain": cli_env(),
        "capped": cli_env(ATEN_CPU_CAPABILITY="default"),
        "threaded": cli_env(OMP_NUM_THREADS="2"),
    }
    logged, served = {}, {}
    for name, env in envs.items():
        result = warm.run([*COMMAND, "train.epochs=1", f"hydra.run.dir={tmp_path / name}"], env=env, cwd=REPO,
                          timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        (logged[name],) = [
            line for line in (result.stdout + result.stderr).splitlines() if "arithmetic:" in line
        ]
        served[name] = warm.has_server(env)  # asked at once: a later server may evict it (_MAX_SERVERS)
    assert served == {"plain": True, "capped": True, "threaded": False}
    assert "DEFAULT CPU kernels, 1 intra-op thread(s)" in logged["capped"]
    assert "DEFAULT CPU kernels" not in logged["plain"] and "1 intra-op thread(s)" in logged["plain"]
    assert "DEFAULT CPU kernels" not in logged["threaded"] and "2 intra-op thread(s)" in logged["threaded"]
    assert warm.would_run_warm(COMMAND) and warm.would_run_warm([SCRIPT, "--help"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert warm.would_run_warm([*torchrun, "--nproc_per_node=2", *COMMAND[1:]])
    assert not warm.would_run_warm([*torchrun, "--nproc_per_node=2", "--no-python", "delving-train"])
    assert not warm.would_run_warm([*torchrun[:3], "--nnodes=2", "--nproc_per_node=2", *COMMAND[1:]])
    assert not warm.would_run_warm(["/usr/local/bin/delving-train"])
    assert warm.would_run_warm([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--smoke"])
    assert not warm.would_run_warm([sys.executable, str(tmp_path / "gpu_check.py")])
    assert not warm.would_run_warm([sys.executable, "-c", "import delving"])


def test_a_terminals_ctrl_c_stops_a_warm_run_as_it_stops_a_new_interpreter(tmp_path: Path) -> None:
    """`warm.start(foreground=True)` is the tests' terminal: the run's own process group, SIGINT at its
    default. A Ctrl-C to the group of a warm run and of a new interpreter started as a foreground job: the same
    exit, the same lines, a checkpoint saved mid-run; and the warm one is a process of its own."""
    command = [*COMMAND, "train.checkpoint_every_steps=100", "data.num_workers=2"]
    env = cli_env(DELVING_STEP_SLEEP_S="0.4")
    starts = {
        "cold": lambda run: subprocess.Popen(
            [*command, f"hydra.run.dir={run}"], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        ),
        "warm": lambda run: warm.start([*command, f"hydra.run.dir={run}"], env, REPO, foreground=True),
    }  # fmt: skip
    said = {}
    for name, start in starts.items():  # one after the other: each is signalled at its step 2 of 12
        process = start(tmp_path / name)
        wait_for_step(tmp_path / name, 2, process)
        assert os.getpgid(process.pid) == process.pid != os.getpgid(0)
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=120)[0]
        assert process.returncode == -signal.SIGINT, output[-3000:]
        said[name] = [line.split("] ", 1)[1] for line in output.splitlines() if "WARNING]" in line]
        assert 2 <= Checkpoint.load(tmp_path / name / "last.pt").train_state["global_step"] < 12
    assert isinstance(process, warm.Started)
    assert said["warm"] == [line.replace("/cold", "/warm") for line in said["cold"]], said
    assert any("stopped on SIGINT" in line for line in said["warm"])
