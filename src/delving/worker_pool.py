"""Worker processes that a terminal's Ctrl-C stops cleanly, whenever it comes.

Ctrl-C reaches the whole process group. The workers ignore it: the main process alone ends them and says
what was done. Workers start with SIGINT held back in the main process (`ctrl_c_held`): a Ctrl-C during a
fork would otherwise raise KeyboardInterrupt inside one of Python's at-fork hooks, which Python prints as
"Exception ignored" and drops; delving-verify-data and delving-eval then ran on to their end (seen in CI).
Held back, it arrives once the workers are up. Workers unblock it after ignoring it (`ignore_ctrl_c`).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from typing import Any


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Holds SIGINT back in this thread (and the processes and threads it starts) while the block runs; a
    Ctrl-C that came meanwhile is raised as KeyboardInterrupt when it ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def ignore_ctrl_c() -> None:
    """In a worker started under `ctrl_c_held`: ignore SIGINT, then unblock it (a Ctrl-C sent during the fork
    is pending here: ignoring it first drops it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    ignore_ctrl_c()
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def forked_pool(
    processes: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> Iterator[Pool]:
    """A fork-context Pool of `processes` workers that ignore SIGINT, ended (terminate, join) on leaving; a
    Ctrl-C while the workers start is raised as KeyboardInterrupt in the main process once they are up."""
    pool: Pool | None = None
    try:
        with ctrl_c_held():  # a Ctrl-C held back is raised on leaving, the pool assigned
            pool = mp.get_context("fork").Pool(processes, _start_worker, (initializer, initargs))
        yield pool
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
