"""The first run on a new GPU machine: what only a GPU shows, checked in under 3 minutes, printed as one table.

    python scripts/gpu_check.py           # on one GPU (CUDA_VISIBLE_DEVICES picks which)
    python scripts/gpu_check.py --smoke   # the same code on the CPU at tiny sizes (tests/test_gpu_check.py runs it)

Rows: the device and its float32 math (train.tf32: TF32 engaged or not); training steps through the real loader
(pinned memory, lighting shift) under `torch.cuda.set_sync_debug_mode("warn")`: no host-device synchronisation
in the input path or the step; the EXIF-orientation-6 JPEG through each installed `decode_jpeg` on the device
against the Pillow path, with data.exif_transpose false and true; a resume that restores RNG states saved with 8
visible GPUs (the old format, one state per GPU, and the current one) in a process started with
CUDA_VISIBLE_DEVICES=0; a checkpoint the trainer saved, read by plain `torch.load` in a process that sees no GPU;
and the model A / C step rows of `bench_train.py --gpu` (eager with TF32, bf16 + channels_last; batch 64).
Exit status 1 when a check fails. Rows a CPU cannot check say n/a in --smoke.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import bench_train  # scripts/ is on sys.path when this file runs
import numpy as np
import torch
from PIL import Image

from delving.checkpoint import capture_rng_state, restore_rng_state
from delving.data.config import DataConfig
from delving.data.device_decode import DeviceTrainTransform, jpeg_decoders, read_for_device
from delving.data.transforms import TrainTransform, draw_train_params, sample_rng
from delving.engine.throughput import train_step_flops
from delving.engine.trainer import Trainer
from delving.numerics import fp32_math, set_tf32

Row = tuple[str, str, str]  # check, status (ok, FAIL, n/a, info), what was seen
OLD_VISIBLE = 8  # GPUs a process saw when it saved the old-format RNG states
OWN = 3  # the local rank whose state is restored


def write_jpeg(path: Path, width: int, height: int, seed: int, orientation: int | None = None) -> Path:
    """A smooth random RGB JPEG (quality 90), with an EXIF orientation tag when given."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90, exif=exif)
    return path


def device_row(device: torch.device) -> Row:
    if device.type != "cuda":
        return ("device", "n/a", f"CPU (--smoke); torch {torch.__version__}")
    props = torch.cuda.get_device_properties(device)
    return (
        "device",
        "info",
        f"{props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB; "
        f"{torch.cuda.device_count()} visible; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}",
    )


def tf32_row(device: torch.device) -> Row:
    """train.tf32's two settings as torch reports them, and (on a GPU) whether TF32 changes a matmul's result."""
    seen = {}
    for enabled in (True, False):
        set_tf32(enabled)
        seen[enabled] = fp32_math()
    expected = {True: {"conv": "tf32", "matmul": "tf32"}, False: {"conv": "ieee", "matmul": "ieee"}}
    status = "ok" if seen == expected else "FAIL"
    detail = f"train.tf32=true: {seen[True]}; false: {seen[False]}"
    if device.type == "cuda":
        a, b = (torch.randn(1024, 1024, device=device) for _ in range(2))
        results = {}
        for enabled in (True, False):
            set_tf32(enabled)
            results[enabled] = a @ b
        gap = (results[True] - results[False]).abs().max().item()
        detail += (
            f"; max |tf32 - ieee| of a 1024^2 matmul: {gap:.2e} ({'TF32 engaged' if gap else 'no TF32 here'})"
        )
    set_tf32(True)
    return ("float32 math (train.tf32)", status, detail)


def make_trainer(data: Path, device: torch.device, smoke: bool) -> Trainer:
    size = ["model.width=0.0625", "model.input_size=32", "model.spp_levels=[1]"] if smoke else []
    crop = 32 if smoke else 224
    overrides = [
        "data=folder", f"data.root={data}", "data.val_split=train", f"data.num_workers={0 if smoke else 2}",
        f"data.crop_size={crop}", f"data.scale_min={crop}", f"data.scale_max={crop + 32}",
        f"data.test_scale={crop}", "model=model_a", *size, "model.num_classes=4", "train.batch_size=8",
        "logger.wandb.mode=disabled", "logger.progress_bar=false", "train.final_eval=false",
    ]  # fmt: skip
    return bench_train.make_trainer(overrides, str(device))


def sync_free_row(trainer: Trainer, steps: int = 3) -> Row:
    """Loader batches and training steps after a warm-up (cuDNN autotuning synchronises on purpose)."""
    batches = iter(trainer.train_loader.epoch(0))
    images, labels = next(batches)
    trainer.train_step(images, labels, want_grad_norms=False)
    if trainer.device.type != "cuda":
        for _ in range(steps):
            loss, _ = trainer.train_step(*next(batches), want_grad_norms=False)
        return ("sync-free loader + step", "n/a", f"{steps + 1} CPU steps ran (loss {loss.item():.3f})")
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                images, labels = next(batches)
                trainer.train_step(images, labels, want_grad_norms=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    return (
        "sync-free loader + step",
        "ok" if not syncs else "FAIL",
        f"{steps} steps under set_sync_debug_mode('warn'): {len(syncs)} synchronisation(s)"
        + (f", first: {syncs[0]}" if syncs else ""),
    )


def exif_rows(device: torch.device, folder: Path) -> list[Row]:
    """The orientation-6 file through each decoder on `device` against the Pillow path (levels of 255)."""
    path = write_jpeg(folder / "exif6.JPEG", 500, 375, seed=11, orientation=6)
    rows = []
    for name, decode in jpeg_decoders().items():
        raw = decode([torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)], device)[0]
        turns = tuple(raw.shape[-2:]) == (500, 375)
        worst = {}
        for exif_transpose in (False, True):
            cfg = DataConfig(exif_transpose=exif_transpose)
            draws = [draw_train_params(sample_rng(0, 0, i), cfg) for i in range(4)]
            reference = torch.stack([TrainTransform(cfg)(path, d) for d in draws])
            transform = DeviceTrainTransform(cfg, device, decoder=name)
            encoded = [read_for_device(path, exif_transpose)] * len(draws)
            out, _, _ = transform(encoded, draws, torch.zeros(len(draws), dtype=torch.int64))
            worst[exif_transpose] = (reference - out.cpu()).abs().mean((1, 2, 3)).max().item()
        rows.append(
            (
                f"EXIF 6 via {name} on {device.type}",
                "ok" if max(worst.values()) < 1.0 else "FAIL",
                f"device path vs Pillow, mean |diff| per sample at most {worst[False]:.2f} (exif_transpose=false), "
                f"{worst[True]:.2f} (true) levels; its raw decode_jpeg {'turns' if turns else 'does not turn'} "
                "the file (delving never gives it one)",
            )
        )
    return rows


def _child(args: list[str], visible: str) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
    result = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["exit " + str(result.returncode)])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def rng_resume_row(device: torch.device, folder: Path) -> Row:
    """States saved with 8 visible GPUs (old format: one per GPU; current: the rank's own), restored by local rank
    3 in a process that sees one GPU: its cuda:0 must draw what cuda:3 would have drawn next."""
    if device.type != "cuda":
        state = capture_rng_state(device)
        expected = torch.rand(4)
        restore_rng_state(state, device, OWN)
        ok = torch.equal(torch.rand(4), expected)
        return ("RNG resume, 8 GPUs -> 1", "ok" if ok else "FAIL", "CPU generator restored; the GPU part n/a")
    old_states = []
    for i in range(OLD_VISIBLE):  # what get_rng_state_all() held: a different stream per visible GPU
        torch.cuda.manual_seed(1000 + i)
        torch.rand(7, device=device)
        old_states.append(torch.cuda.get_rng_state(device))
    old = {**capture_rng_state(), "cuda": old_states}
    old.pop("cuda_device")
    torch.cuda.set_rng_state(old_states[OWN], device)
    expected_old = torch.rand(4, device=device).tolist()
    current = capture_rng_state(device)
    expected_new = torch.rand(4, device=device).tolist()
    seen = {}
    for name, state in (("old", old), ("current", current)):
        torch.save(state, folder / f"rng_{name}.pt")
        seen[name] = _child(["--restore-rng", str(folder / f"rng_{name}.pt")], visible="0")
    ok = seen["old"].get("draws") == expected_old and seen["current"].get("draws") == expected_new
    return (
        "RNG resume, 8 GPUs -> 1",
        "ok" if ok else "FAIL",
        f"local rank {OWN} under CUDA_VISIBLE_DEVICES=0 draws cuda:{OWN}'s next numbers: old format "
        f"{'yes' if seen['old'].get('draws') == expected_old else seen['old']}, current "
        f"{'yes' if seen['current'].get('draws') == expected_new else seen['current']}",
    )


def restore_rng_child(path: str) -> None:
    state = torch.load(path, weights_only=True)
    device = torch.device("cuda:0")
    restore_rng_state(state, device, OWN)
    print(json.dumps({"draws": torch.rand(4, device=device).tolist()}))


def cpu_checkpoint_row(trainer: Trainer) -> Row:
    path = trainer._save()
    seen = _child(["--load-checkpoint", str(path)], visible="")
    ok = seen.get("devices") == ["cpu"]
    return (
        "checkpoint without a GPU",
        "ok" if ok else "FAIL",
        f"last.pt from the {trainer.device.type} run, plain torch.load where no GPU is visible: "
        + (f"{seen['tensors']} tensors, all on {seen['devices']}" if "tensors" in seen else str(seen)),
    )


def load_checkpoint_child(path: str) -> None:
    state = torch.load(path, weights_only=True)  # no map_location: a CUDA tensor would fail here
    tensors = []

    def walk(tree: object) -> None:
        if isinstance(tree, torch.Tensor):
            tensors.append(tree)
        elif isinstance(tree, dict):
            for value in tree.values():
                walk(value)
        elif isinstance(tree, list | tuple):
            for value in tree:
                walk(value)

    walk(state)
    print(json.dumps({"tensors": len(tensors), "devices": sorted({t.device.type for t in tensors})}))


def step_rows(device: torch.device, smoke: bool, budget_s: float) -> list[Row]:
    """bench_train.py --gpu's rows for models A and C: eager (TF32, the default) and bf16 + channels_last."""
    size, batch, classes = (32, 2, 10) if smoke else (224, 64, 1000)
    model_keys = ["model.width=0.0625", "model.input_size=32", "model.spp_levels=[1]"] if smoke else []
    data = bench_train.class_folders(bench_train.scratch("classes"), classes, 8)
    base = [
        "data=folder", f"data.root={data}", "data.val_split=train", "data.num_workers=0", "data.crop_size=8",
        "data.scale_min=8", "data.scale_max=8", "data.test_scale=8", f"model.num_classes={classes}",
        "logger.wandb.mode=disabled", "logger.progress_bar=false", "train.final_eval=false", "train.batch_size=2",
    ]  # fmt: skip
    timing = argparse.Namespace(
        warmup=1 if smoke else 3,
        min_steps=1 if smoke else 10,
        min_seconds=0.0 if smoke else 2.0,
        profile=None,
    )
    rows, started = [], time.perf_counter()
    for variant in ("eager fp32", "bf16 + channels_last"):
        for model in ("model_a", "model_c"):
            if time.perf_counter() - started > budget_s:
                rows.append((f"step {model} {variant}", "n/a", f"skipped: past the {budget_s:.0f}-s budget"))
                continue
            trainer = bench_train.make_trainer(
                [*base, f"model={model}", *model_keys, *bench_train.VARIANTS[variant]], str(device)
            )
            _, flops = train_step_flops(trainer.model, *bench_train._one_image(trainer, size))
            timing.variant = variant
            row = bench_train.bench_row(trainer, batch, timing, flops)
            memory = f", peak {row['mem']:.1f} GiB" if row["mem"] is not None else ""
            rows.append(
                (
                    f"step {model} {variant}",
                    "info",
                    f"batch {batch}: {row['s'] * 1e3:.1f} ms/step, {batch / row['s']:.0f} img/s, "
                    f"{row['tflops']:.1f} TFLOP/s{memory}",
                )
            )
            del trainer
    return rows


def print_table(rows: list[Row]) -> None:
    width = max(len(check) for check, _, _ in rows)
    print(f"{'check':{width}}  {'status':6}  seen")
    for check, status, detail in rows:
        print(f"{check:{width}}  {status:6}  {detail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run on the CPU at tiny sizes (CI)")
    parser.add_argument("--budget-s", type=float, default=90, help="time for the step rows (default 90)")
    parser.add_argument("--restore-rng", help=argparse.SUPPRESS)
    parser.add_argument("--load-checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restore_rng:
        restore_rng_child(args.restore_rng)
        return 0
    if args.load_checkpoint:
        load_checkpoint_child(args.load_checkpoint)
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print(
            "gpu_check: no GPU visible here; run it on a GPU node, or --smoke for the CPU version",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    device = torch.device("cpu") if args.smoke else torch.device("cuda:0")
    folder = bench_train.scratch("gpu_check")
    data = folder / "data"
    for k in range(4):
        for i in range(8):
            write_jpeg(data / "train" / f"c{k}" / f"{i}.JPEG", 300, 225, seed=10 * k + i)
    rows = [device_row(device), tf32_row(device)]
    trainer = make_trainer(data, device, args.smoke)
    rows.append(sync_free_row(trainer))
    rows.append(cpu_checkpoint_row(trainer))
    trainer.release_loaders()
    del trainer
    rows += exif_rows(device, folder)
    rows.append(rng_resume_row(device, folder))
    rows += step_rows(device, args.smoke, args.budget_s)
    rows.append(("total", "info", f"{time.perf_counter() - started:.0f} s"))
    print_table(rows)
    return 1 if any(status == "FAIL" for _, status, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
