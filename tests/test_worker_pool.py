"""A Ctrl-C that lands while workers fork (a pool, a DataLoader's) is raised in the main process, not dropped."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from delving.worker_pool import forked_pool

# SIGINT sent to itself from an at-fork hook, which runs in the main process after each fork: the moment a
# terminal's Ctrl-C hit delving-verify-data in CI, where Python printed "Exception ignored" and ran on.
CTRL_C_DURING_THE_FORKS = """
import os, signal
from delving.worker_pool import forked_pool
os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
try:
    with forked_pool(2) as pool:
        print("ran to the end", pool.map(abs, [-1, -2]))
except KeyboardInterrupt:
    print("interrupted")
"""


# The same moment for delving-eval's decoding workers (a torch DataLoader), where CI saw it next.
CTRL_C_DURING_THE_LOADERS_FORKS = """
import os, signal
from delving.evaluation.evaluator import _items
os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
try:
    print("ran to the end", len(list(_items(list(range(6)), 2))))
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "script", [CTRL_C_DURING_THE_FORKS, CTRL_C_DURING_THE_LOADERS_FORKS], ids=["pool", "loader"]
)
def test_a_ctrl_c_during_the_forks_is_raised_once_the_workers_are_up(script: str):
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job starts with it ignored
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted", done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr


def _initialised(value: int) -> None:
    global _value
    _value = value


def _worker_state(_: int) -> tuple[object, int]:
    return signal.getsignal(signal.SIGINT), _value


def test_the_workers_ignore_ctrl_c_run_the_initializer_and_end_with_the_block():
    with forked_pool(2, _initialised, (7,)) as pool:
        states = pool.map(_worker_state, range(4))
    assert states == [(signal.SIG_IGN, 7)] * 4
    assert pool._state == "TERMINATE"  # ended on leaving, not left to the garbage collector
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the main process unblocked
