"""Times the paper's train transform (window resample + JPEG draft) against torchvision's
Resize(s) + RandomCrop(224) + RandomHorizontalFlip with the same draws, single thread, on generated JPEGs,
and the TrainLoader's throughput with 0 and 2 workers.

    .venv/bin/python scripts/bench_data.py [--images 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from delving.data.config import DataConfig, DatasetKind
from delving.data.decode import decode_image
from delving.data.loaders import TrainLoader
from delving.data.transforms import draw_train_params, reference_crop, sample_rng, train_crop

SIZES = ((500, 375), (1600, 1200))


def write_photos(folder: Path, size: tuple[int, int], count: int) -> list[Path]:
    """Photo-like JPEGs (smooth structure plus fine noise, quality 90), so decoding costs what it does on ImageNet."""
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        coarse = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 6, img.shape)
        path = folder / f"c{i % 2}" / f"{size[0]}x{size[1]}_{i:03d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def time_per_image(fn, jobs: list, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for job in jobs:
            fn(*job)
        best = min(best, (time.perf_counter() - start) / len(jobs))
    return best


def bench_transform(paths: list[Path], repeats: int) -> tuple[float, float, float, float]:
    cfg = DataConfig()
    jobs = [(p, draw_train_params(sample_rng(0, 0, i), cfg)) for i, p in enumerate(paths)]
    ours = time_per_image(lambda p, d: train_crop(p, d, cfg.crop_size, True), jobs, repeats)
    ref = time_per_image(lambda p, d: reference_crop(decode_image(p), d, cfg.crop_size), jobs, repeats)
    diffs = [
        (
            np.abs(
                np.asarray(train_crop(p, d, cfg.crop_size, use_draft), np.float64)
                - np.asarray(reference_crop(decode_image(p), d, cfg.crop_size), np.float64)
            ).mean()
        )
        for use_draft in (False, True)
        for p, d in jobs
    ]
    half = len(jobs)
    return ours, ref, float(np.mean(diffs[:half])), float(np.mean(diffs[half:]))


def bench_loader(root: Path, workers: int, batch_size: int, epochs: int) -> float:
    cfg = DataConfig(name=DatasetKind.folder, root=str(root), val_split="train", num_workers=workers)
    loader = TrainLoader(cfg, batch_size=batch_size, seed=0)
    next(iter(loader.epoch(0)))  # start the workers outside the timing
    start, seen = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        seen += sum(len(labels) for _, labels in loader.epoch(epoch))
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20, help="JPEGs per size")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (the best is kept)")
    parser.add_argument("--loader-epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"train transform, single thread, {args.images} JPEGs per size, best of {args.repeats}:")
        print(
            f"{'size':>10} {'ours ms':>8} {'torchvision ms':>15} {'speed-up':>9} {'|diff| no draft':>16} {'|diff| draft':>13}"
        )
        all_paths = []
        for size in SIZES:
            paths = write_photos(Path(tmp) / "train", size, args.images)
            all_paths += paths
            ours, ref, diff, diff_draft = bench_transform(paths, args.repeats)
            print(
                f"{size[0]:>4}x{size[1]:<5} {ours * 1e3:8.2f} {ref * 1e3:15.2f} {ref / ours:8.2f}x "
                f"{diff:16.3f} {diff_draft:13.3f}"
            )
        print(f"TrainLoader throughput (224 crops, both sizes, {len(all_paths)} files, batch 8):")
        for workers in (0, 2):
            rate = bench_loader(Path(tmp), workers, batch_size=8, epochs=args.loader_epochs)
            print(f"  num_workers={workers}: {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
