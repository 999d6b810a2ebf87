"""Stop requests from the outside: SLURM's pre-timeout signal, preemption, scancel, Kubernetes, docker stop.

The handler only records the signal; the trainer checks it at each step boundary, where every rank
agrees, saves an exact mid-epoch last.pt and exits with EXIT_STOPPED. Between phases where no step
boundary comes (the final evaluation), `raise_now` makes the handler raise at once instead.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from types import FrameType

log = logging.getLogger("delving")

# "Stopped on a signal after saving last.pt: relaunch the same command to continue" (EX_TEMPFAIL).
EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequested(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped on {signal.Signals(signum).name}")
        self.signum = signum


class StopSignals:
    """Installs the handlers on enter, restores the previous ones on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.raise_now = False
        self._previous: dict[int, object] = {}

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
        first = self.received is None
        self.received = signum
        if first:
            log.warning(
                "received %s: saving at the next step boundary, then exiting", signal.Signals(signum).name
            )
        if self.raise_now:
            raise StopRequested(signum)

    @property
    def requested(self) -> bool:
        return self.received is not None


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
