"""Stop requests from the outside: SLURM's pre-timeout signal, preemption, scancel, Kubernetes, docker stop,
and a person's Ctrl-C or closed terminal.

The handler only records the signal; the trainer checks it at each step boundary, where every rank
agrees, saves an exact mid-epoch last.pt and exits: with EXIT_STOPPED after SIGUSR1/SIGTERM (a scheduler
relaunches or requeues), and on the signal itself after SIGINT/SIGHUP (`end_on_signal`: a shell then sees
130/129 and a loop around the command stops, as after Python's own Ctrl-C). A second Ctrl-C ends the
process at once, without saving. Between phases where no step boundary comes (the final evaluation),
`raise_now` makes the handler raise at once instead.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from types import FrameType

log = logging.getLogger("delving")

# "Stopped on a signal after saving last.pt: relaunch the same command to continue" (EX_TEMPFAIL).
EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A person's stop: after the save the process ends on the signal (shell status 128 + signal: 130, 129).
INTERACTIVE_SIGNALS = (signal.SIGINT, signal.SIGHUP)
# torchrun forwards the Ctrl-C its ranks already had: a repeat this soon is that, not a second press.
REPEAT_AFTER_S = 1.0


class StopRequested(BaseException):
    """A BaseException, as KeyboardInterrupt and asyncio.CancelledError are: no `except Exception` on its way
    up (the decoder's catch-all for bad files, a DataLoader's, failing_together) may take a stop for an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped on {signal.Signals(signum).name}")
        self.signum = signum


class RunStopped(SystemExit):
    """Raised after a stop signal was handled: the process exits with EXIT_STOPPED (SIGUSR1, SIGTERM), or
    once everything is closed, `exit()` ends it on SIGINT/SIGHUP itself (shell status 130/129)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(EXIT_STOPPED)
        self.signum = signum

    def exit(self) -> None:
        if self.signum in INTERACTIVE_SIGNALS:
            end_on_signal(self.signum)
        raise self


class StopSignals:
    """Installs the handlers on enter, restores the previous ones on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.raise_now = False
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()
        self._received_at = 0.0

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            # After a stop, the process is on its way out with EXIT_STOPPED: a later SIGTERM (srun's
            # --kill-on-bad-exit when a sibling rank exits first, the requeue's kill) must not turn it into 143.
            signal.signal(signum, signal.SIG_IGN if self.received is not None else handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # A forked loader worker inherits this handler (Ctrl-C reaches the whole process group): its rank stops.
        if os.getpid() != self._pid:
            return
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self._received_at = signum, time.monotonic()
            again = " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
            what = (
                "stopping now (training is saved)" if self.raise_now else "saving at the next step boundary"
            )
            log.warning("received %s: %s, then exiting%s", name, what, again)
        elif signum == signal.SIGINT and time.monotonic() - self._received_at > REPEAT_AFTER_S:
            log.warning("received SIGINT again: stopping now, without saving (last.pt holds the last save)")
            end_on_signal(signum)
        if self.raise_now:
            self.raise_now = False  # one raise: a second signal must not interrupt the stop's own clean-up
            raise StopRequested(signum)

    @property
    def requested(self) -> bool:
        return self.received is not None


def end_on_signal(signum: int) -> None:
    """Ends the process on `signum` with its default action, so its parent sees it ended on that signal."""
    for handler in logging.getLogger("delving").handlers:
        handler.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    signal.pause()  # the signal is delivered at once; never reached


def requeue_slurm_job() -> bool:
    """`scontrol requeue` this SLURM batch job (it goes back to pending and reruns the same script)."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if job
        else os.environ.get("SLURM_JOB_ID")
    )
    if not job_id:
        return False
    try:
        subprocess.run(
            ["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or error
        log.warning(
            "could not requeue SLURM job %s (%s); resubmit the same command to continue", job_id, detail
        )
        return False
    log.info("requeued SLURM job %s: it continues from last.pt when it starts again", job_id)
    return True
