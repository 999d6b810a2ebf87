"""Times training steps: the Trainer against a bare loop on the CPU, or the training throughput on a GPU.

CPU (default): the Trainer's step loop against a bare PyTorch loop (same model, same TrainLoader
batches, torch.optim.SGD), alternating A/B rounds; target ratio >= 0.95.

--gpu: models A and C at 224 on device-resident batches (the model's step, not JPEG decoding), per-GPU
batches 16, 32 and 64, for eager fp32, bf16 + channels_last and bf16 + channels_last + torch.compile. Each row:
ms/step, images/s, TFLOP/s (FlopCounterMode's count of the step), MFU against the bf16 matmul peak measured
at the start of the same run, peak memory. The whole run keeps to --budget-s (default 180 s, for the
4-minute device slot): compiled rows that no longer fit are skipped and listed. --profile DIR also writes a
profiler table per row (and prints where the time goes).

--cpu-smoke: the --gpu code at tiny sizes on the CPU (narrow nets at 64 px, batches 2 and 4), to try it
without a GPU.

    python scripts/bench_train.py                           # CPU: Trainer vs bare loop, the demo net
    python scripts/bench_train.py --gpu [--profile DIR]     # one GPU, < 4 minutes
    python scripts/bench_train.py --cpu-smoke [--compile]   # the same code on the CPU, tiny
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image

from delving.cli.common import CONFIG_DIR, register_resolvers
from delving.config import register_all
from delving.dist import DistributedContext, pick_device
from delving.engine.throughput import matmul_peak_flops, profile_table, train_step_flops
from delving.engine.trainer import Trainer
from delving.models import build_model
from delving.plan.measure import model_step_rate, trainer_loop_rate

register_all()
register_resolvers()


@functools.cache
def _scratch_root() -> tempfile.TemporaryDirectory:
    """The runs' folders and the generated class folders, made at the first need and removed when the script
    ends (weakref.finalize at exit)."""
    return tempfile.TemporaryDirectory(prefix="bench_train_")


def scratch(name: str) -> Path:
    """A new folder under the script's scratch folder."""
    return Path(tempfile.mkdtemp(prefix=f"{name}_", dir=_scratch_root().name))


VARIANTS = {
    "eager fp32": [],
    "bf16 + channels_last": ["train.precision=bf16", "train.channels_last=true"],
    "bf16 + cl + compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
}


def make_trainer(overrides: list[str], device: str) -> Trainer:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"train.device={device}", "resume=null"])
    ctx = DistributedContext(0, 1, 0, pick_device(device, 0))
    return Trainer(cfg, str(scratch("run")), ctx)


# ---------------------------------------------------------------- CPU: Trainer vs bare loop
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
    """The Trainer's own loop (train_epoch) over the last `steps` steps of epoch 0, timed as delving-plan does."""
    return steps * trainer.cfg.train.batch_size / trainer_loop_rate(trainer, steps)


def cpu_bench(args: argparse.Namespace) -> None:
    overrides = [
        "experiment=demo", "logger.wandb.mode=disabled", "logger.progress_bar=false",
        f"data.synthetic_train_per_class={args.per_class}", "data.num_workers=2",
    ]  # fmt: skip
    trainer = make_trainer(overrides, "cpu")
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


# ---------------------------------------------------------------- GPU throughput (and its CPU smoke)
def class_folders(root: Path, classes: int, size: int) -> Path:
    """`classes` folders of one tiny JPEG: the Trainer's loaders need a data set with the model's class count
    (1000, so the head is the paper's), and the benchmark never reads it."""
    for k in range(classes):
        (root / "train" / f"c{k:04d}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (k % 256, 0, 0)).save(root / "train" / f"c{k:04d}" / "0.JPEG")
    return root


def bench_row(trainer: Trainer, batch: int, args: argparse.Namespace, flops_per_image: float) -> dict:
    device, size = trainer.device, trainer.cfg.model.input_size
    images = torch.randn(batch, 3, size, size, device=device) * 60
    labels = torch.randint(0, trainer.cfg.model.num_classes, (batch,), device=device)
    step = lambda: trainer.train_step(images, labels, want_grad_norms=False)  # noqa: E731
    rate = model_step_rate(trainer, images, labels, args.min_seconds, args.warmup, args.min_steps)
    row = {"s": rate.seconds, "steps": rate.steps, "warmup_s": rate.warmup_s, "mem": rate.peak_gib,
           "tflops": flops_per_image * batch / rate.seconds / 1e12}  # fmt: skip
    if args.profile:
        variant = "_".join(args.variant.split()).replace("+", "")
        name = f"{trainer.cfg.model.name.value}_{variant}_b{batch}.txt"
        row["profile"] = profile_table(step, device, 3, Path(args.profile) / name)
    return row


def gpu_bench(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    smoke = args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    size, batches = (64, [2, 4]) if smoke else (224, [16, 32, 64])
    model_keys = ["model.width=0.125", "model.input_size=64", "model.spp_levels=[2,1]"] if smoke else []
    peak = matmul_peak_flops(torch.device(device), 512 if smoke else 8192, 0.5 if smoke else 1.5)
    name = "CPU (smoke: tiny nets, numbers mean nothing)" if smoke else torch.cuda.get_device_name()
    print(f"{name}: bf16 matmul peak measured {peak / 1e12:.1f} TFLOP/s; {args.min_steps}+ steps and "
          f"{args.min_seconds}+ s per row after {args.warmup} warm-up steps; budget {args.budget_s:.0f} s")  # fmt: skip
    print(f"{'model':8} {'variant':22} {'batch':>5} {'ms/step':>8} {'img/s':>8} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'peak GiB':>8} {'warm-up s':>9}")  # fmt: skip
    data = class_folders(scratch("classes"), 1000, 8)
    base = [
        "data=folder", f"data.root={data}", "data.val_split=train", "data.num_workers=0", "data.crop_size=8",
        "data.scale_min=8", "data.scale_max=8", "data.test_scale=8", "model.num_classes=1000",
        "logger.wandb.mode=disabled", "logger.progress_bar=false", "train.final_eval=false",
        "train.batch_size=16",
    ]  # fmt: skip
    variants = {k: v for k, v in VARIANTS.items() if args.compile or "compile" not in k}
    skipped, compile_guess = [], 90.0  # seconds one compile takes, until one is measured
    for variant, extra in variants.items():
        for model in args.models:
            trainer = make_trainer([*base, f"model={model}", *model_keys, *extra], device)
            fwd, total = train_step_flops(trainer.model, *_one_image(trainer, size))
            for batch in batches:
                left = args.budget_s - (time.perf_counter() - started)
                need = args.min_seconds + (compile_guess if "compile" in variant else 5)
                if left < need:
                    skipped.append(f"{model} {variant} batch {batch}")
                    continue
                if "compile" in variant:
                    torch._dynamo.reset()  # a fresh static-shape graph per batch, as training compiles
                args.variant = variant
                row = bench_row(trainer, batch, args, total)
                if "compile" in variant:
                    compile_guess = row["warmup_s"]
                mem = f"{row['mem']:8.2f}" if row["mem"] is not None else f"{'-':>8}"
                print(f"{model:8} {variant:22} {batch:5d} {row['s'] * 1e3:8.1f} {batch / row['s']:8.0f} "
                      f"{row['tflops']:8.2f} {row['tflops'] * 1e12 / peak:6.3f} {mem} {row['warmup_s']:9.1f}"
                      + (f"\n    profile: {row['profile']}" if "profile" in row else ""), flush=True)  # fmt: skip
            print(f"  {model}: {fwd / 1e9:.2f} GFLOP forward, {total / 1e9:.2f} GFLOP forward + backward per "
                  f"{size}-px image (x{total / fwd:.2f})", flush=True)  # fmt: skip
            del trainer
    if skipped:
        print(f"skipped for the {args.budget_s:.0f}-s budget: {'; '.join(skipped)}")
    print(f"total {time.perf_counter() - started:.0f} s")


def _one_image(trainer: Trainer, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FLOPs are counted on one image in eager fp32 (the count is linear in the batch and the same in bf16)."""
    images = torch.randn(1, 3, size, size, device=trainer.device)
    return images, torch.zeros(1, dtype=torch.int64, device=trainer.device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true", help="the GPU throughput table (models A and C)")
    parser.add_argument("--cpu-smoke", action="store_true", help="--gpu's code on the CPU at tiny sizes")
    parser.add_argument("--models", nargs="+", default=["model_a", "model_c"])
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled rows")
    parser.add_argument("--compile", dest="compile", action="store_true", help="(--cpu-smoke) add them")
    parser.add_argument("--profile", metavar="DIR", help="write a profiler table per row into DIR")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=180.0,
        help="the whole run's time budget (--gpu); imports and CUDA start-up come on top",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row (compile, autotune)")
    parser.add_argument("--min-steps", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=20, help="(CPU) steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="(CPU) alternating rounds")
    parser.add_argument("--per-class", type=int, default=20, help="(CPU) synthetic train images per class")
    parser.set_defaults(compile=None)
    args = parser.parse_args()
    if args.compile is None:
        args.compile = not args.cpu_smoke  # compiling on 2 CPU cores takes minutes: opt in there
    if args.cpu_smoke:
        args.min_steps, args.min_seconds, args.warmup = min(args.min_steps, 2), min(args.min_seconds, 0.2), 1
    gpu_bench(args) if (args.gpu or args.cpu_smoke) else cpu_bench(args)


if __name__ == "__main__":
    main()
