"""train.channels_last, train.precision=bf16 and train.compile on a CPU, as users launch them: each switch's
run, SIGKILLed mid-epoch and relaunched, ends bitwise equal to its uninterrupted run (one process, one thread:
the same kernels in the same order), and delving-eval reads its checkpoint without the switch.

torch.compile builds C++ on a CPU (tens of seconds per launch), so one compiled scenario runs: all three
switches together, its launches sharing one inductor cache."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import warm
from helpers.runs import EQUAL_RUN, KILL_STEP, cli_env, run_train

from delving.checkpoint import Checkpoint
from delving.evaluation.predictions import load_predictions

# The final evaluation is on: its predictions are what delving-eval, without the switch, must reproduce.
BASE = [*EQUAL_RUN, "train.final_eval=true", "eval=dense"]
SWITCHES = {
    "channels_last": ["train.channels_last=true"],
    "bf16": ["train.precision=bf16"],
    "all_three": ["train.compile=true", "train.channels_last=true", "train.precision=bf16"],
}


@pytest.fixture(scope="session")
def switch_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per scenario: `whole` (uninterrupted) and `killed` (SIGKILL after step 5, relaunched with resume=auto);
    `plain`: the same run with every switch off. Made once per session, when first asked for."""
    root = tmp_path_factory.mktemp("switches")
    # One compile cache for the compiled launches (the relaunches reuse the first one's kernels), compiled in
    # this process (no pool of compile workers on 2 cores); a cold compile takes minutes on a busy machine.
    env = cli_env(TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"), TORCHINDUCTOR_COMPILE_THREADS="1")
    runs: dict[str, dict[str, Path]] = {"plain": {"whole": root / "plain"}}
    run_train(runs["plain"]["whole"], BASE, env=env)
    for name, switch in SWITCHES.items():
        runs[name] = {"whole": root / name / "whole", "killed": root / name / "killed"}
        run_train(runs[name]["whole"], [*BASE, *switch], env=env, timeout=1200)
        killed = run_train(
            runs[name]["killed"],
            [*BASE, *switch],
            check=False,
            env={**env, "DELVING_KILL_AT_STEP": str(KILL_STEP)},
            timeout=1200,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        run_train(runs[name]["killed"], [*BASE, *switch, "resume=auto"], env=env, timeout=1200)
    return runs


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return Checkpoint.load(run / "last.pt").model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWITCHES))
def test_a_killed_and_relaunched_run_with_the_switch_equals_the_uninterrupted_one(
    name: str, switch_runs: dict[str, dict[str, Path]]
) -> None:
    whole, killed = _weights(switch_runs[name]["whole"]), _weights(switch_runs[name]["killed"])
    assert Checkpoint.load(switch_runs[name]["killed"] / "last.pt").train_state["global_step"] == 12
    assert whole.keys() == killed.keys() and all(torch.equal(whole[k], killed[k]) for k in whole), name
    # The switch computed the run: other numbers than the plain run's, yet close (12 small SGD steps).
    plain = _weights(switch_runs["plain"]["whole"])
    assert whole.keys() == plain.keys()  # no compile wrapper's prefix (_orig_mod.) in the saved names
    if name != "channels_last":  # channels_last on one thread: the same sums, maybe in the same order
        assert not all(torch.equal(whole[k], plain[k]) for k in whole), f"{name} changed nothing"
    for key in whole:
        torch.testing.assert_close(whole[key], plain[key], rtol=0, atol=2e-3, msg=f"{name}: {key}")


@pytest.mark.slow
def test_channels_last_trains_in_channels_last(switch_runs: dict[str, dict[str, Path]]) -> None:
    """The weights are saved with the memory format they trained in (torch.save keeps strides)."""
    for name, expected in (("channels_last", True), ("all_three", True), ("plain", False)):
        conv = _weights(switch_runs[name]["whole"])["features.conv1.weight"]
        assert conv.is_contiguous(memory_format=torch.channels_last) is expected, name


@pytest.mark.slow
def test_the_compiled_run_compiled(switch_runs: dict[str, dict[str, Path]]) -> None:
    cache = switch_runs["plain"]["whole"].parent / "inductor"
    assert any(cache.rglob("*.cpp")) or any(cache.rglob("*.so")), "train.compile=true generated no kernel"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWITCHES))
def test_delving_eval_reads_the_checkpoint_without_the_switch(
    name: str, switch_runs: dict[str, dict[str, Path]]
) -> None:
    """delving-eval (fp32, no compile, contiguous) gives the final evaluation's numbers: the final evaluation
    runs in fp32 on a CPU (autocast is for training), so only the memory format and compiled kernels differ."""
    run = switch_runs[name]["whole"]
    result = warm.run(
        [str(Path(sys.executable).parent / "delving-eval"), f"checkpoint={run}", "device=cpu"],
        env=cli_env(),
        cwd=run.parent,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final, again = (
        load_predictions(run / "predictions-dense.npz"),
        load_predictions(run / "predictions-dense-s256.npz"),
    )
    assert final.num_images == again.num_images == 16 and list(final.ids) == list(again.ids)
    np.testing.assert_allclose(again.probs, final.probs, rtol=0, atol=1e-5)
    assert (again.probs.argmax(1) == final.probs.argmax(1)).all()
