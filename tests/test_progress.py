"""Progress: plain lines every N items or every 60 s off a terminal, a total-time line, silence when disabled."""

from __future__ import annotations

import io
import logging

import pytest

from delving.progress import Progress, format_duration, format_rate


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_n_items_or_every_minute_and_a_total() -> None:
    clock, out = _Clock(), io.StringIO()
    with Progress(1000, "eval dense", every_n=400, stream=out, clock=clock) as progress:
        for _ in range(10):  # 10 images in 50 s: below both thresholds, no line
            clock.now += 5
            progress.update()
        clock.now = 70.0  # a minute since the start: a line at the next update
        progress.update()
        for _ in range(400):  # 400 more images: a line for the count
            progress.update()
        clock.now = 100.0
        progress.update(589)  # the last ones: no status line, the total line follows
    lines = out.getvalue().splitlines()
    assert lines == [
        "eval dense: 1,000 images to go",
        "eval dense: 11/1,000 images (1%), 0.157 images/s, ETA 1h44m, elapsed 1m10s",
        "eval dense: 411/1,000 images (41%), 5.87 images/s, ETA 1m40s, elapsed 1m10s",
        "eval dense: 1,000 images in 1m40s (10 images/s)",
    ]


def test_fast_rates_read_in_plain_figures() -> None:
    clock, out = _Clock(), io.StringIO()
    with Progress(7240, "verify", unit="files", stream=out, clock=clock) as progress:
        clock.now = 1.0
        progress.update(7240)
    assert out.getvalue().splitlines()[-1] == "verify: 7,240 files in 1.0 s (7,240 files/s)"
    assert [format_rate(r) for r in (0.157, 5.87, 72.4, 724.4, 7240.4, 1.2e6)] == [
        "0.157", "5.87", "72.4", "724", "7,240", "1,200,000",
    ]  # fmt: skip


def test_lines_go_to_the_delving_logger_when_it_is_set_up(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="delving"):
        Progress(2, "x", stream=out).close()
    assert out.getvalue() == "" and "x: 0 images in" in caplog.text


def test_disabled_progress_writes_nothing() -> None:
    out = io.StringIO()
    with Progress(5, "x", enabled=False, stream=out) as progress:
        progress.update(5)
    assert out.getvalue() == ""


def test_durations_read_well() -> None:
    assert [format_duration(s) for s in (3.21, 65, 3599.6, 7380, float("nan"))] == [
        "3.2 s",
        "1m05s",
        "1h00m",
        "2h03m",
        "?",
    ]
