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
5. delving-train (experiment=demo on the tree) from launch to the end of its first step, the same two ways;
6. with --copies: the hub's copies at the same size, beside the folder's figures of 1. and 2.: WebDataset
   shards as timm/imagenet-1k-wds lays them out (1,024 shards with `.jpg`/`.cls`/`.json` members and
   `_info.json`) and parquet as the hub does (294 files, `image` {bytes, path} and `label`), each a few
   distinct files hard-linked under the published names, with tiny members (a 16x16 JPEG: the index, not the
   image bytes, is measured): index build (the tar header scan; the parquet metadata and label/path
   columns), the relaunch (the stored index), and the workers' memory growth reading every sample.

    .venv/bin/python scripts/bench_index.py --photos /path/to/jpegs --root /tmp/imagenet-links [--train 1281167]
    .venv/bin/python scripts/bench_index.py --photos /path/to/jpegs --copies   # 1, 2 and 6 only
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from delving.data.config import DataConfig, DatasetKind
from delving.data.datasets import walk_split
from delving.data.index import RACY_SECONDS, _cache_file, cache_root, folder_listing
from delving.data.readers import COPIES, FolderReader, open_split
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


def _touch_all(reader: object, count: int, conn, together, read_every: int) -> None:
    together.wait()  # every worker forked: PSS divides the shared pages by the same count before and after
    before = _private_kb()
    for i in range(count):
        if i % read_every == 0:
            reader.source(i)  # type: ignore[attr-defined]
        else:
            reader.sample_id(i)  # type: ignore[attr-defined]
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

    def sample_id(self, i: int) -> str:
        return self.samples[i][0]


def worker_growth(reader: object, count: int, workers: int, read_every: int = 1) -> list[tuple[float, float]]:
    """(USS, PSS) growth in MB of each of `workers` forked processes reading every sample's label and source
    (or, past every `read_every`-th sample, its id: the index without the file reads); gc.freeze() first, as
    the loaders do."""
    gc.collect()
    gc.freeze()
    try:
        pipes, processes = [], []
        context = mp.get_context("fork")
        together = context.Barrier(workers)
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_touch_all, args=(reader, count, child, together, read_every))
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


HUB_TRAIN_SHARDS = 1024  # timm/imagenet-1k-wds: imagenet1k-train-{0000..1023}.tar
HUB_TRAIN_PARQUET = 294  # the hub's ImageNet-1k: data/train-{00000..00293}-of-00294.parquet
DISTINCT_FILES = 8  # distinct files behind the hard links (each file's samples are other classes)
READ_EVERY = 100  # part 6's workers read every 100th sample's bytes (all 1.28 M: a row group read each)
PARQUET_ROW_GROUP = 100  # rows per row group (datasets writes image sets in groups of 100 rows)


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 80, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _split_counts(total: int, parts: int) -> list[int]:
    return [total // parts + (n < total % parts) for n in range(parts)]


def _hub_samples(file_no: int, count: int) -> list[tuple[str, int]]:
    """(file name, label) of distinct file `file_no`: together the DISTINCT_FILES files cover every class (at
    125 samples per file or more), and the names carry their label's wnid, as the hub's do."""
    labels = [(file_no + i * DISTINCT_FILES) % CLASSES for i in range(count)]
    return [(f"n{label:08d}_{file_no}_{i}.JPEG", label) for i, label in enumerate(labels)]


def build_hub_shards(root: Path, train: int) -> None:
    """timm/imagenet-1k-wds's train layout at `train` samples: DISTINCT_FILES shards hard-linked 1,024 times."""
    if (root / "_info.json").is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    jpeg, counts = _tiny_jpeg(), _split_counts(train, HUB_TRAIN_SHARDS)
    names = [f"imagenet1k-train-{n:04d}.tar" for n in range(HUB_TRAIN_SHARDS)]
    for n, name in enumerate(names):
        if n >= DISTINCT_FILES:
            os.link(root / names[n % DISTINCT_FILES], root / name)
            continue
        with tarfile.open(root / name, "w", format=tarfile.GNU_FORMAT) as tar:
            for file_name, label in _hub_samples(n, max(counts)):
                key = file_name[: -len(".JPEG")]
                meta = json.dumps({"filename": file_name, "label": label, "class_name": f"class {label}"})
                for ext, data in (("jpg", jpeg), ("cls", str(label).encode()), ("json", meta.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    # Every shard holds max(counts) samples (the links repeat the distinct files).
    split = {"name": "train", "num_samples": max(counts) * len(names), "filenames": names,
             "shard_lengths": [max(counts)] * len(names)}  # fmt: skip
    (root / "_info.json").write_text(json.dumps({"name": "imagenet-1k", "splits": {"train": split}}))
    age_files(root)


def build_hub_parquet(root: Path, train: int) -> None:
    """The hub's ImageNet-1k parquet train split at `train` rows: DISTINCT_FILES files hard-linked 294 times."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data"
    if data.is_dir():
        return
    data.mkdir(parents=True)
    jpeg, counts = _tiny_jpeg(), _split_counts(train, HUB_TRAIN_PARQUET)
    features = {"image": {"_type": "Image"}, "label": {"names": [f"class {k}" for k in range(CLASSES)],
                                                       "_type": "ClassLabel"}}  # fmt: skip
    schema = pa.schema([
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
        pa.field("label", pa.int64()),
    ]).with_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})  # fmt: skip
    names = [f"train-{n:05d}-of-{HUB_TRAIN_PARQUET:05d}.parquet" for n in range(HUB_TRAIN_PARQUET)]
    for n, name in enumerate(names):
        if n >= DISTINCT_FILES:
            os.link(data / names[n % DISTINCT_FILES], data / name)
            continue
        rows = _hub_samples(n, max(counts))
        table = pa.table({
            "image": [{"bytes": jpeg, "path": f"{f[:-5]}_n{label:08d}.JPEG"} for f, label in rows],
            "label": [label for _, label in rows],
        }, schema=schema)  # fmt: skip
        pq.write_table(table, data / name, row_group_size=PARQUET_ROW_GROUP)
    age_files(root)


def age_files(root: Path, seconds: float = 60.0) -> None:
    """Dates the files a minute back (mtime; the ctime is now and is let pass before indexing)."""
    when = time.time() - seconds
    for path in root.rglob("*"):
        os.utime(path, (when, when))


def _cpu_seconds() -> float:
    """CPU time of this process and its ended children (the header scan's pool): a figure a busy machine
    does not inflate as much as the wall time."""
    import resource

    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def hub_copy_figures(kind: str, root: Path, workers: int) -> str:
    """Index build, relaunch and worker growth of one hub copy (its index not stored before)."""
    cfg = DataConfig(name=DatasetKind(kind), root=str(root), val_split="train")
    copy = COPIES[DatasetKind(kind)]
    for stored in (cache_root() / "index").glob(f"{kind}-*.npz"):
        stored.unlink()
    time.sleep(
        3.5
    )  # the files' change times must be older than the racy window, as for any copy made earlier
    start, cpu = time.perf_counter(), _cpu_seconds()
    copy.open(root, "train", cfg)
    built, built_cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    start = time.perf_counter()
    reader = copy.open(root, "train", cfg)
    relaunch = time.perf_counter() - start
    growth = worker_growth(reader, len(reader), workers, READ_EVERY)
    uss, pss = np.mean([u for u, _ in growth]), np.mean([p for _, p in growth])
    return (f"data={kind} {len(reader):,} samples: index build {built:.1f} s ({built_cpu:.1f} s of CPU), relaunch {relaunch:.2f} s; per worker, "
            f"every sample's label and id, every {READ_EVERY}th read + gc: USS +{uss:.1f} MB PSS +{pss:.1f} MB")  # fmt: skip


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
    parser.add_argument("--skip-train", action="store_true", help="leave out part 5 (delving-train)")
    parser.add_argument("--copies", action="store_true", help="parts 1, 2 and 6 (the hub's copies) only")
    parser.add_argument("--hub-root", type=Path, default=Path("/tmp/delving-hub-copies"))
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

    if args.copies:
        build_hub_shards(args.hub_root / "wds", args.train)
        build_hub_parquet(args.hub_root / "parquet", args.train)
        for kind in ("wds", "parquet"):
            print("6. " + hub_copy_figures(kind, args.hub_root / kind, args.workers), flush=True)
        return
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
