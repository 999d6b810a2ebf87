"""Scanning a data set with the training decoder, so a bad file is found before a multi-day run, not in it.

The reader (its index in arrays) reaches the worker processes once, through fork; each task is only a range of
sample positions, so the cost per file does not grow with the data set (pickling the reader per task did).
Progress goes to stderr: a bar on a terminal, else a line at least every 30 s with the files done, the rate,
the bad files so far and the ETA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

from delving.data.config import DataConfig
from delving.data.decode import BadImageError, decode_image
from delving.data.readers import SampleReader, open_split
from delving.progress import Progress
from delving.worker_pool import forked_pool

TASK_SIZE = (
    256  # files per task: large enough to amortise the round trip, small enough to balance the workers
)
PROGRESS_EVERY_S = 30.0

_reader: SampleReader | None = None  # set in each worker by fork, before any task arrives


def _set_reader(reader: SampleReader) -> None:
    global _reader
    _reader = reader


@dataclass
class ScanTally:
    """What a scan has done so far, per split: (files checked, files listed); and the bad files found."""

    splits: dict[str, tuple[int, int]] = field(default_factory=dict)
    bad: int = 0

    def describe(self, planned: list[str]) -> str:
        done = [f"{split}: {checked:,} of {total:,} files" for split, (checked, total) in self.splits.items()]
        left = [split for split in planned if split not in self.splits]
        return (
            f"checked {'; '.join(done) or 'no file yet'}"
            + (f" ({', '.join(left)} not started)" if left else "")
            + f"; {self.bad:,} unreadable so far"
            + (" (listed above)" if self.bad else "")
        )


def check_range(reader: SampleReader, start: int, stop: int) -> list[tuple[str, str]]:
    """(file, reason) of each unreadable image among samples [start, stop)."""
    bad = []
    for index in range(start, stop):
        try:
            decode_image(
                reader.source(index)
            )  # full-size decode: a draft could stop before a late corruption
        except BadImageError as err:
            bad.append((err.path, err.reason))
    return bad


def _check_task(task: tuple[int, int]) -> tuple[int, list[tuple[str, str]]]:
    assert _reader is not None
    start, stop = task
    return stop - start, check_range(_reader, start, stop)


def task_ranges(count: int, size: int = TASK_SIZE) -> Iterator[tuple[int, int]]:
    return ((start, min(start + size, count)) for start in range(0, count, size))


def scan_split(
    cfg: DataConfig, split: str, processes: int, show_progress: bool = False, tally: ScanTally | None = None
) -> Iterator[tuple[str, str]]:
    """Yields (file, reason) for every unreadable image of `split`, in data set order; listing errors raise
    with the path. The split is listed afresh (a stored listing could be stale) and the new listing stored.
    `tally` follows the files checked and the bad ones found (for an interrupted scan)."""
    tally = tally if tally is not None else ScanTally()
    reader, _ = open_split(cfg, split, fresh_listing=True)
    tally.splits[split] = (0, len(reader))
    tasks = task_ranges(len(reader))
    bad = 0
    with Progress(
        len(reader),
        f"verify {split}",
        "files",
        enabled=show_progress,
        every_s=PROGRESS_EVERY_S,
        note=lambda: f"{bad:,} bad",
    ) as progress:
        pool_context = forked_pool(processes, _set_reader, (reader,)) if processes > 1 else nullcontext()
        with pool_context as pool:
            if pool is None:
                results: Iterator = (
                    (stop - start, check_range(reader, start, stop)) for start, stop in tasks
                )
            else:
                results = pool.imap(_check_task, tasks)
            for done, failures in results:
                bad += len(failures)
                progress.update(done)
                checked, total = tally.splits[split]
                tally.splits[split] = (checked + done, total)
                for failure in failures:
                    tally.bad += 1
                    yield failure
