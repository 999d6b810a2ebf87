"""Shared test settings: small thread counts (2 cores), a private data cache, helpers to run the CLIs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import warm
from helpers.configs import compose_config
from helpers.runs import EQUAL_RUN, KILL_STEP, cli_env, run_train
from omegaconf import DictConfig

from delving.config import register_all

# Fixtures every test gets (cheap, made once per worker): they do not tie tests to one xdist worker.
_EVERYWHERE = {"private_data_cache", "registered_schemas", "tmp_path_factory", "worker_id", "testrun_uid"}
# Shared fixtures that run commands (trainings, SLURM jobs, console scripts): a test that uses one is `slow`,
# even when its own part is quick, so `make test-quick` makes none of them.
_LAUNCHING_FIXTURES = {
    "single_run", "killed_and_resumed_run", "ddp_runs", "tuned_ddp_run", "script_runs", "wheel_site",
    "copy_runs", "big_val_images", "switch_runs", "tiny_mini_runs", "report", "mixed_runs", "capped_runs",
    "slurm", "reference", "stored_mean",
}  # fmt: skip
# `make test-quick` names the tests it ran that took longer than this without a `slow` mark.
_QUICK_S = 3.0


# tryfirst: xdist's own hook (on each worker) reads the marks into the test ids; run after it, the marks were
# made too late and every shared run was made once per worker.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share a session- or module-wide fixture (a real training run, a generated data set) go to one
    xdist worker together (`--dist loadgroup`), so the fixture is made once, not once per worker. Tests that
    share no such fixture are spread one by one."""
    owner: dict[
        str, str
    ] = {}  # union-find over the shared fixtures: tests using two of them join both groups

    def find(name: str) -> str:
        while owner.setdefault(name, name) != name:
            name = owner[name]
        return name

    shared_by_item = {}
    for item in items:
        shared = []
        for name, definitions in item._fixtureinfo.name2fixturedefs.items():
            scope = definitions[-1].scope
            if name in _EVERYWHERE or scope not in ("session", "module", "package"):
                continue
            shared.append(name if scope == "session" else f"{item.module.__name__}::{name}")
        shared_by_item[item] = shared
        for name in shared[1:]:
            owner[find(name)] = find(shared[0])
    for item, shared in shared_by_item.items():
        if shared and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(find(shared[0])))
        if _LAUNCHING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


_took: dict[str, float] = {}
_counted_starting_s = [warm.starting_s]  # warm.starting_s when the last phase's report was made


def _names_long_tests(config: pytest.Config) -> bool:
    """Whether this run is test-quick's (`-m "not slow ..."`), which ends naming unmarked long tests."""
    return "not slow" in (config.option.markexpr or "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under test-quick, each phase's report carries the seconds it waited for a warm server to start
    (helpers/warm.py): the first test of a worker to fork a run pays it, whichever test that is."""
    outcome = yield
    if _names_long_tests(item.config):
        waited, _counted_starting_s[0] = warm.starting_s - _counted_starting_s[0], warm.starting_s
        outcome.get_result().user_properties.append(("warm_server_start_s", waited))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    starting = sum(v for k, v in report.user_properties if k == "warm_server_start_s")
    # setup, call and teardown, less the wait for a warm server
    _took[report.nodeid] = _took.get(report.nodeid, 0.0) + report.duration - starting


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Under `-m "not slow ..."` (make test-quick), the tests that took over `_QUICK_S` seconds unmarked: the
    edit loop stays quick only while such tests are marked `slow` (or use a fixture of `_LAUNCHING_FIXTURES`)."""
    if not _names_long_tests(config):
        return
    long = sorted(((s, nodeid) for nodeid, s in _took.items() if s > _QUICK_S), reverse=True)
    if long:
        terminalreporter.write_line(
            f"{len(long)} test(s) took over {_QUICK_S:g} s without a slow mark; mark them "
            "@pytest.mark.slow to keep make test-quick quick:"
        )
        for seconds, nodeid in long:
            terminalreporter.write_line(f"  {seconds:5.1f} s  {nodeid}")


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("data_cache")
    os.environ["DELVING_DATA_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session", autouse=True)
def registered_schemas() -> None:
    register_all()


@pytest.fixture
def compose_train() -> Callable[[list[str]], DictConfig]:
    """Composes delving-train's config (no Hydra run config) with the given overrides."""

    return compose_config


# Scenario runs, shared by the trainer and lifecycle tests (each made once per session, when first asked for).


@pytest.fixture(scope="session")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, dropout on, a checkpoint every 2 steps, wandb offline: 2 epochs uninterrupted."""
    run = tmp_path_factory.mktemp("single")
    run_train(run, ["train.checkpoint_every_steps=2", "logger.wandb.mode=offline"])
    return run


@pytest.fixture(scope="session")
def killed_and_resumed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """single_run's settings, SIGKILLed right after step 5 (mid-epoch 0), then relaunched."""
    run = tmp_path_factory.mktemp("killed")
    killed = run_train(run, ["train.checkpoint_every_steps=2"], check=False,
                       env=cli_env(DELVING_KILL_AT_STEP=str(KILL_STEP)))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_train(run, ["train.checkpoint_every_steps=2", "resume=auto"])
    return run


@pytest.fixture(scope="session")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dropout off: one process, two (gloo), and two SIGKILLed mid-epoch then relaunched."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {name: root / name for name in ("one_proc", "two_proc", "two_killed")}
    run_train(runs["one_proc"], EQUAL_RUN)
    run_train(runs["two_proc"], EQUAL_RUN, nproc=2)
    killed = run_train(runs["two_killed"], EQUAL_RUN, nproc=2, check=False,
                       env=cli_env(DELVING_KILL_AT_STEP=str(KILL_STEP)))  # fmt: skip
    assert killed.returncode != 0
    run_train(runs["two_killed"], [*EQUAL_RUN, "resume=auto"], nproc=2)
    return runs


# DDP's tuning knobs together (static_graph refuses gradient accumulation: preflight, PyTorch issue 143580).
TUNED_DDP = [
    "train.ddp.bucket_cap_mb=0.01",
    "train.ddp.gradient_as_bucket_view=true",
    "train.ddp.static_graph=true",
]


@pytest.fixture(scope="session")
def tuned_ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ddp_runs' two-process run with every DDP knob turned (tiny buckets: several all-reduces per step)."""
    run = tmp_path_factory.mktemp("ddp_tuned")
    run_train(run, [*EQUAL_RUN, *TUNED_DDP], nproc=2)
    return run
