"""Scanning a data set with the training decoder, so a bad file is found before a multi-day run, not in it."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

from delving.data.config import DataConfig
from delving.data.decode import BadImageError, decode_image
from delving.data.readers import SampleReader, open_split


def _check(args: tuple[SampleReader, int]) -> tuple[str, str] | None:
    reader, index = args
    try:
        decode_image(reader.source(index))  # full-size decode: a draft could stop before a late corruption
    except BadImageError as err:
        return err.path, err.reason
    return None


def scan_split(cfg: DataConfig, split: str, processes: int) -> Iterator[tuple[str, str]]:
    """Yields (file, reason) for every unreadable image of `split`; listing errors raise with the path."""
    reader, _ = open_split(cfg, split)
    jobs = ((reader, i) for i in range(len(reader)))
    if processes <= 1:
        results: Iterator = map(_check, jobs)
        yield from (r for r in results if r is not None)
        return
    with mp.get_context("fork").Pool(processes) as pool:
        yield from (r for r in pool.imap(_check, jobs, chunksize=64) if r is not None)
