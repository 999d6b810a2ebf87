"""Times training steps side by side and prints ratios against a named baseline.

CPU (default): the Trainer's step loop against a bare PyTorch loop (same model, same TrainLoader
batches, torch.optim.SGD), alternating A/B rounds; target ratio >= 0.95.
GPU (--gpu): eager fp32 (baseline) vs bf16 + channels_last (+ torch.compile), model A at 224 on
device-resident batches, so the numbers are the model's step and not JPEG decoding.

    python scripts/bench_train.py                 # CPU, the demo net on synthetic data
    python scripts/bench_train.py --gpu --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from delving.cli.common import CONFIG_DIR, register_resolvers
from delving.config import register_all
from delving.engine.trainer import Trainer
from delving.models import build_model

register_all()
register_resolvers()


def make_trainer(overrides: list[str]) -> Trainer:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return Trainer(cfg, tempfile.mkdtemp(prefix="bench_train_"))


def bare_loop_seconds(trainer: Trainer, steps: int) -> float:
    """The loop everyone writes first: forward, loss, backward, SGD step; nothing else."""
    torch.manual_seed(0)
    model = build_model(trainer.cfg.model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=trainer.cfg.optim.lr, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for done, (images, labels) in enumerate(trainer.train_loader.epoch(0), 1):
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if done == steps:
            break
    return time.perf_counter() - start


def trainer_seconds(trainer: Trainer, steps: int) -> float:
    trainer.epoch, trainer.step_in_epoch = 0, 0
    start = time.perf_counter()
    trainer.train_epoch(max_steps=steps)
    return time.perf_counter() - start


def cpu_bench(args: argparse.Namespace) -> None:
    overrides = [
        "experiment=demo", "train.device=cpu", "logger.wandb.mode=disabled", "logger.progress_bar=false",
        f"data.synthetic_train_per_class={args.per_class}", "data.num_workers=2",
    ]  # fmt: skip
    trainer = make_trainer(overrides)
    steps = min(args.steps, trainer.train_loader.steps_per_epoch)
    bare_loop_seconds(trainer, 3), trainer_seconds(trainer, 3)  # warm-up: workers, allocator
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop_seconds(trainer, steps))
        ours.append(trainer_seconds(trainer, steps))
    b, t = statistics.median(bare), statistics.median(ours)
    batch = trainer.cfg.train.batch_size
    print(f"CPU, {steps} steps of batch {batch}, {args.rounds} alternating rounds, medians:")
    print(f"  baseline bare PyTorch loop : {steps * batch / b:8.1f} images/s")
    print(f"  Trainer                    : {steps * batch / t:8.1f} images/s")
    print(f"  ratio Trainer / bare loop  : {b / t:.3f}  (target >= 0.95)")


def gpu_step_seconds(overrides: list[str], steps: int, batch: int) -> float:
    trainer = make_trainer(overrides)
    size = trainer.cfg.model.input_size
    images = torch.randn(batch, 3, size, size, device=trainer.device) * 60
    labels = torch.randint(0, trainer.cfg.model.num_classes, (batch,), device=trainer.device)
    for _ in range(3):
        trainer.train_step(images, labels, want_grad_norms=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, labels, want_grad_norms=False)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def gpu_bench(args: argparse.Namespace) -> None:
    base = [
        f"model={args.model}", "model.num_classes=1000", "data=synthetic", "data.synthetic_classes=1000",
        "data.synthetic_train_per_class=1", "data.synthetic_val_per_class=1", f"train.batch_size={args.batch}",
        "logger.wandb.mode=disabled", "train.final_eval=false", "data.num_workers=0",
        "data.crop_size=56", "data.scale_min=64", "data.scale_max=96",
    ]  # fmt: skip
    variants = {
        "eager fp32 (baseline)": [],
        "bf16 + channels_last": ["train.precision=bf16", "train.channels_last=true"],
    }
    if not args.no_compile:
        variants["bf16 + channels_last + compile"] = [*variants["bf16 + channels_last"], "train.compile=true"]
    print(
        f"GPU {torch.cuda.get_device_name()}, {args.model} at 224, batch {args.batch}, {args.steps} timed steps"
    )
    seconds = {
        name: gpu_step_seconds(base + extra, args.steps, args.batch) for name, extra in variants.items()
    }
    baseline = seconds["eager fp32 (baseline)"]
    for name, value in seconds.items():
        print(
            f"  {name:32s}: {value * 1000:8.1f} ms/step  {args.batch / value:8.0f} images/s  x{baseline / value:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=20, help="synthetic train images per class (CPU)")
    parser.add_argument("--model", default="model_a")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    gpu_bench(args) if args.gpu else cpu_bench(args)


if __name__ == "__main__":
    main()
