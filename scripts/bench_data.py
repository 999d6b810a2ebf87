"""Times the training input.

1. The paper's train transform (window resample + JPEG draft) against torchvision's Resize(s) + RandomCrop(224)
   + RandomHorizontalFlip with the same draws, single thread, on generated JPEGs; the TrainLoader with 0 and 2
   workers.
2. --pipeline: ImageNet-like JPEGs (500x375, quality 90) through the TrainLoader with the paper's augmentation
   at batch 64, on the Pillow path (decode in the workers) and on data.decode_on_device (the workers read
   bytes; --device decodes and transforms), for each --workers count; set against the model's own speed on
   synthetic tensors (measured for models A and C with bf16 + channels_last on a GPU, else the issue's targets)
   to give the CPU cores one GPU needs.

3. --photos DIR: per core on real photos (a folder of JPEGs; none ship with the repository), medians of
   --rounds alternating rounds in one run: bare decode (Pillow; simplejpeg, a libjpeg-turbo binding, where
   installed), our train and eval transforms as the loader's workers run them (uint8 out), and the peers'
   train transforms after the same decode: timm's create_transform(224, is_training=True) and torchvision's
   reference recipe (RandomResizedCrop, flip, to float, Normalize), and DALI's CPU pipeline (one thread) where
   nvidia-dali is installed. --pipeline --photos DIR times the loader
   on those photos instead of generated ones.

    .venv/bin/python scripts/bench_data.py [--images 20] [--repeats 3]
    .venv/bin/python scripts/bench_data.py --photos /data/photos [--rounds 5]
    .venv/bin/python scripts/bench_data.py --pipeline --device cuda --workers 0 2 4 8 --pipeline-images 1024
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from delving.data.config import DataConfig, DatasetKind
from delving.data.decode import decode_image
from delving.data.loaders import TrainLoader
from delving.data.transforms import (
    EvalTransform,
    draw_train_params,
    reference_crop,
    sample_rng,
    train_crop,
)
from delving.engine.throughput import time_per_step
from delving.models import build_model
from delving.plan.measure import loader_rate, train_crop_job

SIZES = ((500, 375), (1600, 1200))
# Without a GPU to measure: the targets (A at 0.45 MFU of 989 TFLOP/s, C at 0.29 MFU: 80 epochs in 4 h).
TARGET_IMAGES_PER_S = {"model_a": 3900.0, "model_c": 900.0}


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


def pipeline_rate(root: Path, workers: int, on_device: bool, device: str, batch: int, batches: int) -> float:
    """Images/s of the TrainLoader (the paper's augmentation, crop 224) after its first batch, timed as
    delving-plan times the input."""
    cfg = DataConfig(name=DatasetKind.folder, root=str(root), val_split="train", num_workers=workers,
                     decode_on_device=on_device)  # fmt: skip
    loader = TrainLoader(cfg, batch_size=batch, seed=0, pin_memory=device == "cuda", device=device)
    with loader:
        return loader_rate(loader, batches, float("inf"))[0].images_per_s


def model_step(name: str, device: torch.device, batch: int = 64):
    """One bf16 + channels_last SGD step of `name` on synthetic tensors already on the device."""
    model = build_model({"name": name, "num_classes": 1000}).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = (torch.randn(batch, 3, 224, 224, device=device) * 60).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def model_rates(device: str) -> tuple[dict[str, float], str]:
    """Images/s of a training step on synthetic tensors (bf16 + channels_last, batch 64), or the targets."""
    if device != "cuda":
        return TARGET_IMAGES_PER_S, "the issue's targets (no GPU here)"
    dev = torch.device(device)
    rates = {
        name: 64 / time_per_step(model_step(name, dev), dev, 3, 10, 2.0)[0] for name in TARGET_IMAGES_PER_S
    }
    torch.cuda.empty_cache()
    return rates, f"measured on {torch.cuda.get_device_name()} (bf16 + channels_last, batch 64, eager)"


def _pillow_decode(path: Path) -> None:
    with Image.open(path) as img:
        img.convert("RGB")


def _per_image(fn, paths: list[Path]):
    def one_round() -> None:
        for i, path in enumerate(paths):
            fn(path, i)

    return one_round


def _dali_round(paths: list[Path], batch: int = 32):
    """DALI's CPU pipeline (one thread), the usual ImageNet training recipe: decode with a random crop, resize to
    224, flip, normalise to float CHW; None where nvidia-dali is not installed."""
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
    except ImportError:
        return None
    names = [str(p) for p in paths]

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None)
    def train():
        jpegs, labels = fn.readers.file(files=names, labels=list(range(len(names))), random_shuffle=False)
        images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=224, resize_y=224)
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", mirror=fn.random.coin_flip(),
            mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
        )  # fmt: skip
        return images, labels

    pipe = train()
    pipe.build()
    steps = -(-len(paths) // batch)

    def one_round() -> None:
        for _ in range(steps):
            pipe.run()

    return one_round, steps * batch


def photo_contenders(paths: list[Path]) -> dict[str, tuple[object, int]]:
    """name -> (a function doing one round of the per-image work one loader worker does, images per round)."""
    import timm.data
    from torchvision import transforms as T

    cfg = DataConfig()
    ours_train, ours_eval = train_crop_job(cfg), EvalTransform(cfg)
    timm_train = timm.data.create_transform(224, is_training=True)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    torchvision_train = T.Compose([
        T.RandomResizedCrop(224, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor(),
        T.ConvertImageDtype(torch.float32), T.Normalize(mean, std),
    ])  # fmt: skip
    per_image = {
        "Pillow decode (RGB)": lambda p, i: _pillow_decode(p),
        "ours: train crop, uint8": ours_train,  # delving-plan's per-core figure times this very job
        "ours: eval centre crop": lambda p, i: ours_eval.crop(p),
        "timm create_transform": lambda p, i: timm_train(Image.open(p).convert("RGB")),
        "torchvision reference": lambda p, i: torchvision_train(Image.open(p).convert("RGB")),
    }
    try:
        import simplejpeg

        per_image["simplejpeg decode (RGB)"] = lambda p, i: simplejpeg.decode_jpeg(p.read_bytes(), "RGB")
    except ImportError:
        pass
    contenders = {name: (_per_image(fn, paths), len(paths)) for name, fn in per_image.items()}
    dali = _dali_round(paths)
    if dali is not None:
        contenders["DALI CPU pipeline"] = dali
    return contenders


def bench_photos(args: argparse.Namespace) -> None:
    """Images/s per core of each contender: medians of alternating rounds, so a loaded machine hits all alike."""
    torch.set_num_threads(1)
    paths = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.images]
    if not paths:
        raise SystemExit(f"no JPEGs under {args.photos}")
    contenders = photo_contenders(paths)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (one_round, count) in contenders.items():
            start = time.perf_counter()
            one_round()
            rates[name].append(count / (time.perf_counter() - start))
    sizes = [Image.open(p).size for p in paths[:200]]
    median_size = tuple(int(v) for v in np.median(np.array(sizes), axis=0))
    print(f"{len(paths)} photos from {args.photos} (median {median_size[0]}x{median_size[1]}), one core, "
          f"median of {args.rounds} alternating rounds:")  # fmt: skip
    decode = float(np.median(rates["Pillow decode (RGB)"]))
    print(f"{'per worker':26} {'images/s':>9} {'x Pillow decode':>16}")
    for name, values in rates.items():
        rate = float(np.median(values))
        print(f"{name:26} {rate:9.0f} {rate / decode:15.2f}x")
    train = float(np.median(rates["ours: train crop, uint8"]))
    print("cores per GPU for our train transform: " + ", ".join(
        f"{k} at {v:.0f} images/s: {v / train:.1f}" for k, v in TARGET_IMAGES_PER_S.items()))  # fmt: skip


def _pipeline_photos(args: argparse.Namespace, folder: Path) -> None:
    if args.photos is None:
        write_photos(folder, (500, 375), args.pipeline_images)
        return
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    for i in range(args.pipeline_images):
        target = folder / f"c{i % 2}" / f"{i:05d}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photos[i % len(photos)], target)


def bench_pipeline(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        _pipeline_photos(args, Path(tmp) / "train")
        rates, source = model_rates(args.device)
        print(f"model speed, {source}: " + ", ".join(f"{k} {v:.0f} images/s" for k, v in rates.items()))
        what = f"photos from {args.photos}" if args.photos else "generated JPEGs 500x375 q90"
        print(f"TrainLoader, {args.pipeline_images} {what}, batch {args.batch}, crop 224, s ~ U[256, 512]:")
        print(f"{'path':28} {'workers':>7} {'images/s':>9} {'per core':>9} " + " ".join(
            f"{'cores/GPU ' + k[-1].upper():>12}" for k in rates))  # fmt: skip
        for on_device in (False, True):
            path = f"decode on {args.device} (bytes)" if on_device else "Pillow in the workers"
            for workers in args.workers:
                rate = pipeline_rate(Path(tmp), workers, on_device, args.device, args.batch, args.batches)
                per_core = rate / max(workers, 1)  # workers=0: the main process is the one core
                cores = " ".join(f"{v / per_core:12.1f}" for v in rates.values())
                print(f"{path:28} {workers:7d} {rate:9.1f} {per_core:9.1f} {cores}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20, help="JPEGs per size")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (the best is kept)")
    parser.add_argument("--loader-epochs", type=int, default=2)
    parser.add_argument("--pipeline", action="store_true", help="the loader against the model's speed")
    parser.add_argument("--device", default="cpu", help="(--pipeline) where decode_on_device decodes")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="(--pipeline) worker counts")
    parser.add_argument("--pipeline-images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3, help="(--pipeline) timed batches per row")
    parser.add_argument("--photos", type=Path, help="a folder of real JPEGs: the per-core comparison on them")
    parser.add_argument("--rounds", type=int, default=5, help="(--photos) alternating rounds, median kept")
    args = parser.parse_args()
    if args.photos is not None and not args.pipeline:
        args.images = args.images if args.images != 20 else 400
        bench_photos(args)
        return
    if args.pipeline:
        bench_pipeline(args)
        return
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
