"""Progress of a long loop that a person or a cluster log can follow, and its total time.

On a terminal (stderr is a TTY) it is a tqdm bar. Otherwise (a SLURM output file, a pipe) a bar would be
one ever-growing line, so it writes a plain line at the start, then every `every_s` seconds or every
`every_n` items, whichever comes first: done/total, percent, rate, ETA and elapsed time. Both end with
one line giving the total time. Lines go to the "delving" logger when it has a handler that takes INFO
(the trainer's console and train.log), else straight to stderr (delving-eval, delving-ensemble).
Pass `enabled=False` on every rank but 0: a disabled Progress writes nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

log = logging.getLogger("delving")


def format_duration(seconds: float) -> str:
    """12.3 s, 4m05s, 2h03m: short, and exact enough for an ETA."""
    if seconds != seconds or seconds == float("inf"):  # NaN or infinity: no rate yet
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_rate(rate: float) -> str:
    """Three significant digits, in plain figures from 1,000 on (7,240, not 7.24e+03)."""
    return f"{rate:,.0f}" if rate >= 1000 else f"{rate:.3g}"


class Progress:
    """`update(n)` after each item (or batch of items), `close()` (or leave the `with` block) at the end."""

    def __init__(
        self,
        total: int,
        what: str,
        unit: str = "images",
        *,
        enabled: bool = True,
        every_s: float = 60.0,
        every_n: int | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        note: Callable[[], str] | None = None,
        initial: int = 0,
        auto_lines: bool = True,
        bar: bool = True,
    ) -> None:
        """`initial`: items already done (a resumed epoch); `auto_lines=False`: off a terminal, no line of its
        own (start, periodic, total): the owner writes its lines with `emit` (the trainer's agreed lines);
        `bar=False`: lines even on a terminal."""
        self.total, self.what, self.unit, self.note = total, what, unit, note
        self.enabled, self.every_s, self.every_n = enabled, every_s, every_n
        self.auto_lines = auto_lines
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.done = initial
        self.started = self.last_line = clock()
        self.last_line_done = initial
        self.closed = False
        self.bar = None
        if not enabled:
            return
        if bar and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=what, unit=unit.rstrip("s") or unit, file=self.stream,
                dynamic_ncols=True,
            )  # fmt: skip
        elif auto_lines:
            self._emit(f"{what}: {total:,} {unit} to go")

    @property
    def plain(self) -> bool:
        """Enabled, and writing lines rather than a bar (stderr is not a terminal)."""
        return self.enabled and self.bar is None

    def set_postfix(self, **values: str) -> None:
        """Values shown after the bar (nothing off a terminal)."""
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if self.note is not None:
                self.bar.set_postfix_str(self.note(), refresh=False)
            return
        if not self.auto_lines:
            return
        now = self.clock()
        due_n = self.every_n is not None and self.done - self.last_line_done >= self.every_n
        if (due_n or now - self.last_line >= self.every_s) and self.done < self.total:
            self.last_line, self.last_line_done = now, self.done
            self._emit(self.status_line())

    def status_line(self) -> str:
        elapsed = self.elapsed
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        percent = 100.0 * self.done / self.total if self.total else 100.0
        note = f", {self.note()}" if self.note is not None else ""
        return (
            f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({percent:.0f}%), {format_rate(rate)} {self.unit}/s"
            f"{note}, ETA {format_duration(eta)}, elapsed {format_duration(elapsed)}"
        )

    def close(self) -> str:
        """Ends the bar and writes (and returns) the total-time line; a second call does nothing."""
        elapsed = self.elapsed
        line = f"{self.what}: {self.done:,} {self.unit} in {format_duration(elapsed)}"
        if self.done and elapsed > 0:
            line += f" ({format_rate(self.done / elapsed)} {self.unit}/s)"
        if self.note is not None:
            line += f", {self.note()}"
        if self.closed or not self.enabled:
            self.closed = True
            return line
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        if self.auto_lines:
            self._emit(line)
        return line

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        elif self.bar is not None:  # an error: no total line, but leave the terminal clean
            self.bar.close()

    def emit(self, line: str) -> None:
        """Writes one line where this progress writes (nothing when disabled)."""
        if self.enabled:
            self._emit(line)

    def _emit(self, line: str) -> None:
        if log.isEnabledFor(logging.INFO) and _has_handler(log):
            log.info(line)
        else:
            print(line, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _has_handler(logger: logging.Logger) -> bool:
    """A handler of its own or up the chain, not Python's last-resort one (which shows warnings only)."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.handlers:
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False
