"""A pool of forked worker processes that a terminal's Ctrl-C stops cleanly, whenever it comes.

Ctrl-C reaches the whole process group. The workers ignore it: the main process alone ends the pool and says
what was done. The pool starts with SIGINT held back in the main process: a Ctrl-C during the forks would
otherwise raise KeyboardInterrupt inside one of Python's at-fork hooks, which Python prints as "Exception
ignored" and drops, and the scan ran on to its end (seen in CI). Held back, it arrives once the pool is up.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from typing import Any


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    # A Ctrl-C sent during the fork is pending in the worker: ignoring SIGINT before unblocking it drops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def forked_pool(
    processes: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> Iterator[Pool]:
    """A fork-context Pool of `processes` workers that ignore SIGINT, ended (terminate, join) on leaving; a
    Ctrl-C while the workers start is raised as KeyboardInterrupt in the main process once they are up."""
    pool: Pool | None = None
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool = mp.get_context("fork").Pool(processes, _start_worker, (initializer, initargs))
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a Ctrl-C held back is raised here, pool assigned
        yield pool
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if pool is not None:
            pool.terminate()
            pool.join()
