"""A console command as a terminal's foreground job, interrupted with Ctrl-C once it has started its work."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from helpers import warm
from helpers.runs import cli_env


def ctrl_c_after(command: list[str], started: str, cwd: Path, timeout: float = 180) -> tuple[int, str, str]:
    """Runs the console script `command[0]` with `command[1:]` (forked warm, helpers/warm.py) in its own
    process group with SIGINT at its default (a background job, as pytest's may be, starts with SIGINT
    ignored); once a stderr line contains `started`, sends SIGINT to the whole group, as a terminal's Ctrl-C
    does (the worker processes get it too).
    Returns (return code, stdout, stderr)."""
    env = cli_env()
    env.pop("HYDRA_FULL_ERROR", None)
    script = [str(Path(sys.executable).parent / command[0]), *command[1:]]
    process = warm.start(script, env, cwd, merge_stderr=False, foreground=True)
    seen = []
    assert process.stderr is not None
    for line in process.stderr:  # until the work has started
        seen.append(line)
        if started in line:
            break
    else:
        raise AssertionError(f"{command[0]} ended before {started!r}:\n{''.join(seen)[-3000:]}")
    os.killpg(process.pid, signal.SIGINT)
    stdout, rest = process.communicate(timeout=timeout)
    return process.returncode, stdout, "".join(seen) + rest
