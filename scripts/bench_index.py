"""The input side at ImageNet's size: listing, the stored listing, worker memory, verify-data, launch to first step.

Builds an ImageNet-shaped tree of hard links (1,000 class folders, --train files in all, 50 val per class) to a
folder of real JPEGs (--photos; directory entries only, so 1.28 M files cost seconds and no image bytes). Its
folders are dated a minute back, as for a data set copied earlier (a folder changed in the last seconds is
never stored). Then, each figure beside its baseline:

1. listing: a fresh walk of train (the 1.28 M files) against reading the stored listing (a relaunch);
2. worker memory: --workers forked processes read every sample (path and label) and run a garbage
   collection; their private memory growth (USS, and PSS, from /proc/<pid>/smaps_rollup) with the array
   index against the Python list of (path, label) tuples it replaces;
3. verify-data: files/s over the first --verify-files files with --processes processes, on this tree against
   a 13,000-file tree of the same photos;
4. the loaders' share of a launch: TrainLoader and EvalLoader built and the first batch out, with no stored
   listing and again with it (a relaunch);
5. delving-train (experiment=demo on the tree) from launch to the end of its first step, the same two ways.

    .venv/bin/python scripts/bench_index.py --photos /path/to/jpegs --root /tmp/imagenet-links [--train 1281167]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from delving.data.config import DataConfig, DatasetKind
from delving.data.datasets import walk_split
from delving.data.index import RACY_SECONDS, _cache_file, folder_listing
from delving.data.readers import FolderReader, open_split
from delving.data.verify import task_ranges
from delving.plan.measure import process_memory

CLASSES = 1000
VAL_PER_CLASS = 50


def build_tree(root: Path, photos: list[Path], train: int) -> float:
    """root/{train,val}/n<k>/... as hard links to the photos; returns the seconds it took (0 if it exists)."""
    if (root / "train").is_dir():
        return 0.0
    start = time.perf_counter()
    for split, total in (("train", train), ("val", CLASSES * VAL_PER_CLASS)):
        for k in range(CLASSES):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            count = total // CLASSES + (k < total % CLASSES)
            for i in range(count):
                os.link(photos[(k * 7919 + i) % len(photos)], folder / f"n{k:08d}_{i}.JPEG")
    # A listing is stored only once its folders have not changed for RACY_SECONDS (their ctime, which
    # cannot be set back): a relaunch of part 1 right after the build must find it stored.
    time.sleep(RACY_SECONDS)
    return time.perf_counter() - start


def _private_kb(pid: int | str = "self") -> tuple[int, int]:
    """(USS, PSS) in kB, read as delving-plan reads its loader workers' memory."""
    memory = process_memory(pid)
    return round(memory.uss_mb * 1024), round(memory.pss_mb * 1024)


def _touch_all(reader: object, count: int, conn, together) -> None:
    together.wait()  # every worker forked: PSS divides the shared pages by the same count before and after
    before = _private_kb()
    for i in range(count):
        reader.source(i)  # type: ignore[attr-defined]
        reader.label(i)  # type: ignore[attr-defined]
    gc.collect()
    together.wait()
    after = _private_kb()
    conn.send(((after[0] - before[0]) / 1024, (after[1] - before[1]) / 1024))
    conn.close()


class ListReader:
    """The index the arrays replaced: a Python list of (path, label) tuples."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def source(self, i: int) -> str:
        return self.samples[i][0]

    def label(self, i: int) -> int:
        return self.samples[i][1]


def worker_growth(reader: object, count: int, workers: int) -> list[tuple[float, float]]:
    """(USS, PSS) growth in MB of each of `workers` forked processes reading every sample; gc.freeze() first,
    as the loaders do."""
    gc.collect()
    gc.freeze()
    try:
        pipes, processes = [], []
        context = mp.get_context("fork")
        together = context.Barrier(workers)
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_touch_all, args=(reader, count, child, together))
            process.start()
            pipes.append(parent)
            processes.append(process)
        results = [pipe.recv() for pipe in pipes]
        for process in processes:
            process.join()
        return results
    finally:
        gc.unfreeze()


def verify_rate(cfg: DataConfig, files: int, processes: int) -> float:
    """Files/s of verify-data's work (decode every file fully) over the first `files` train files."""
    from delving.data import verify

    reader, _ = open_split(cfg, cfg.train_split)
    start = time.perf_counter()
    pool = mp.get_context("fork").Pool(processes, initializer=verify._set_reader, initargs=(reader,))
    try:
        done = sum(n for n, _ in pool.imap(verify._check_task, task_ranges(min(files, len(reader)))))
    finally:
        pool.terminate()
        pool.join()
    return done / (time.perf_counter() - start)


def loaders_to_first_batch(root: Path) -> float:
    """Seconds to build the trainer's two loaders on the tree and get the first training batch."""
    from delving.data.loaders import EvalLoader, TrainLoader

    cfg = DataConfig(name=DatasetKind.folder, root=str(root), crop_size=56, scale_min=64, scale_max=96,
                     test_scale=64, num_workers=2)  # fmt: skip
    start = time.perf_counter()
    with TrainLoader(cfg, batch_size=16) as train, EvalLoader(cfg, "val", batch_size=16):
        next(iter(train.epoch(0)))
        return time.perf_counter() - start


def first_step_seconds(root: Path, run_dir: Path) -> float:
    """delving-train from launch to the end of its first step (the trainer's kill hook ends it there)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        sys.executable, "-m", "delving.cli.train", "experiment=demo", "data=folder", f"data.root={root}",
        "model.num_classes=null", "data.crop_size=56", "data.scale_min=64", "data.scale_max=96",
        "data.test_scale=64", "data.num_workers=2", "train.batch_size=16", "logger.wandb.mode=disabled",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(
        command, env={**os.environ, "DELVING_KILL_AT_STEP": "1"}, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != -9:
        raise SystemExit(f"delving-train did not reach its first step:\n{result.stderr[-3000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, required=True, help="a folder of real JPEGs to link to")
    parser.add_argument("--root", type=Path, default=Path("/tmp/delving-imagenet-links"))
    parser.add_argument("--small-root", type=Path, default=Path("/tmp/delving-imagenet-links-13k"))
    parser.add_argument("--train", type=int, default=1_281_167)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--verify-files", type=int, default=6000)
    parser.add_argument("--skip-train", action="store_true", help="leave out part 4 (delving-train)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DELVING_DATA_CACHE", str(args.root.parent / "delving-bench-cache"))
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not photos:
        raise SystemExit(f"no JPEGs under {args.photos}")
    built = build_tree(args.root, photos, args.train)
    build_tree(args.small_root, photos, 13_000)
    print(f"tree: {args.train:,} train + {CLASSES * VAL_PER_CLASS:,} val hard links to {len(photos)} photos"
          + (f", built in {built:.1f} s" if built else ", already there"))  # fmt: skip

    split = args.root / "train"
    _cache_file(split).unlink(missing_ok=True)
    start = time.perf_counter()
    walk = walk_split(split)
    walked = time.perf_counter() - start
    folder_listing(split)  # stores it
    start = time.perf_counter()
    listing = folder_listing(split)
    stored = time.perf_counter() - start
    print(f"1. listing {len(walk.paths):,} files: walk {walked:.2f} s, stored listing {stored:.3f} s "
          f"({walked / stored:.0f}x faster); index {listing.paths.nbytes / 2**20:.0f} MiB of paths "
          f"+ {listing.labels.nbytes / 2**20:.0f} MiB of labels")  # fmt: skip

    count = len(listing.labels)
    arrays = worker_growth(FolderReader(listing), count, args.workers)
    prefix = os.fsencode(split) + b"/"
    as_list = ListReader(
        [(os.fsdecode(prefix + p), int(c)) for p, c in zip(walk.paths, walk.labels, strict=True)]
    )
    del walk
    listed = worker_growth(as_list, count, args.workers)
    del as_list
    uss_a, uss_l = np.mean([u for u, _ in arrays]), np.mean([u for u, _ in listed])
    pss_a, pss_l = np.mean([p for _, p in arrays]), np.mean([p for _, p in listed])
    print(f"2. per worker, reading all {count:,} samples + gc: arrays USS +{uss_a:.1f} MB PSS +{pss_a:.1f} MB; "
          f"list USS +{uss_l:.1f} MB PSS +{pss_l:.1f} MB ({args.workers} workers; list/arrays USS "
          f"{uss_l / max(uss_a, 0.1):.0f}x)")  # fmt: skip

    big = verify_rate(
        DataConfig(name=DatasetKind.folder, root=str(args.root)), args.verify_files, args.processes
    )
    small = verify_rate(
        DataConfig(name=DatasetKind.folder, root=str(args.small_root)), args.verify_files, args.processes
    )
    one = verify_rate(DataConfig(name=DatasetKind.folder, root=str(args.root)), args.verify_files // 2, 1)
    print(f"3. verify-data, {args.verify_files:,} files, {args.processes} processes: {big:.0f} files/s on "
          f"{count:,} entries, {small:.0f} on 13,000 (ratio {big / small:.2f}); 1 process {one:.0f} "
          f"(x{big / one:.2f} with {args.processes})")  # fmt: skip
    for name in ("train", "val"):
        _cache_file(args.root / name).unlink(missing_ok=True)
    fresh_in, stored_in = loaders_to_first_batch(args.root), loaders_to_first_batch(args.root)
    print(f"4. the input side of a launch (TrainLoader + EvalLoader + the first batch, 2 workers): {fresh_in:.2f} s "
          f"with no stored listing, {stored_in:.2f} s relaunched")  # fmt: skip
    if args.skip_train:
        return
    for name in ("train", "val"):
        _cache_file(args.root / name).unlink(missing_ok=True)
    run_dir = args.root.parent / "delving-bench-run"
    fresh = first_step_seconds(args.root, run_dir)
    relaunch = first_step_seconds(args.root, run_dir)
    print(f"5. delving-train experiment=demo on the tree, launch to first step: {fresh:.1f} s with no stored "
          f"listing, {relaunch:.1f} s relaunched ({fresh - relaunch:.1f} s saved)")  # fmt: skip


if __name__ == "__main__":
    main()
