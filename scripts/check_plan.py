"""Is delving-plan right on this machine? It plans a run, then the run trains, and the projected epoch time is
set beside the measured one (the time from one epoch's validation line to the next: the training steps, the
checkpoint saves and the validation, as the projection counts them).

(a) the demo (experiment=demo, the synthetic set); (b) with --photos DIR, model A at width 1/8 on a folder
data set made of hard links to real JPEGs (--classes classes, --train-per-class and --val-per-class each; the
photos are reused in turn; nothing is copied or committed).

    .venv/bin/python scripts/check_plan.py [--photos /path/to/imagenet-sample-images] [--budget-s 60]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
EPOCH_LINE = re.compile(r"epoch (\d+): val top-1 error")


def timed_epochs(command: list[str], env: dict[str, str] | None = None) -> tuple[list[float], str]:
    """Runs `command` (a delving-train) and returns the seconds between its successive validation lines (one
    per epoch after the first), and its whole output."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    )
    assert process.stdout is not None
    marks, output = [], []
    for line in process.stdout:
        output.append(line)
        if EPOCH_LINE.search(line):
            marks.append(time.perf_counter())
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{''.join(output)[-3000:]}")
    return [b - a for a, b in itertools.pairwise(marks)], "".join(output)


def plan_then_train(name: str, overrides: list[str], out: Path, budget_s: float) -> dict[str, float]:
    """delving-plan, then delving-train with the same overrides; the plan's epoch and the measured one."""
    plan_dir, run_dir = out / f"{name}-plan", out / f"{name}-run"
    start = time.perf_counter()
    plan = subprocess.run(
        [str(BIN / "delving-plan"), *overrides, f"budget_s={budget_s}", f"plan_dir={plan_dir}",
         f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    plan_wall = time.perf_counter() - start
    if plan.returncode != 0:
        raise SystemExit(
            f"delving-plan failed ({plan.returncode}):\n{plan.stdout[-2000:]}\n{plan.stderr[-3000:]}"
        )
    record = json.loads((plan_dir / "plan.json").read_text())
    if run_dir.exists():
        raise SystemExit(f"delving-plan wrote into the planned run's folder {run_dir}")
    epochs, _ = timed_epochs(
        [str(BIN / "delving-train"), *overrides, f"hydra.run.dir={run_dir}", "resume=null", "start_over=true"]
    )
    measured = sorted(epochs)[len(epochs) // 2]
    projection = record["projection"]
    return {"projected": projection["epoch_s"], "measured": measured, "plan_wall": plan_wall,
            "bottleneck": projection["bottleneck"], "epochs_timed": len(epochs)}  # fmt: skip


def photo_folder(photos: Path, root: Path, classes: int, train: int, val: int) -> Path:
    """root/{train,val}/c<k>/ of hard links to the photos (each used in turn)."""
    files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEGs under {photos}")
    if (root / "train").is_dir():
        return root
    n = 0
    for split, per_class in (("train", train), ("val", val)):
        for k in range(classes):
            folder = root / split / f"c{k:03d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                os.link(files[n % len(files)], folder / f"{i:04d}.JPEG")
                n += 1
    when = time.time() - 120  # a data set copied earlier: its listing may be stored
    for folder in [p for p in root.rglob("*") if p.is_dir()]:
        os.utime(folder, (when, when))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, help="a folder of real JPEGs: also (b), model A at width 1/8")
    parser.add_argument("--out", type=Path, default=Path("/tmp/delving-check-plan"))
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs of each real run (the first is not timed)"
    )
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--train-per-class", type=int, default=32)
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument(
        "--demo-per-class", type=int, help="fewer demo training images (default: the demo's 80)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"train.epochs={args.epochs}", "train.final_eval=false", "logger.wandb.mode=disabled",
              "logger.progress_bar=false"]  # fmt: skip
    cases = {}
    if not args.skip_demo:
        smaller = [f"data.synthetic_train_per_class={args.demo_per_class}"] if args.demo_per_class else []
        cases["demo"] = ["experiment=demo", *smaller, *common]
    if args.photos:
        root = photo_folder(
            args.photos, args.out / "photos", args.classes, args.train_per_class, args.val_per_class
        )
        # LR 0.005: the paper's 0.01 goes with batch 128, and diverged here at 32.
        cases["model A x1/8, photos"] = [
            "experiment=paper_model_a", "data=folder", f"data.root={root}", "model.width=0.125",
            "model.num_classes=null", "train.batch_size=32", "data.num_workers=2", "train.keep_best=1",
            "optim.lr=0.005", *common,
        ]  # fmt: skip
    rows = {}
    for name, overrides in cases.items():
        print(f"{name}: delving-plan, then delving-train {' '.join(overrides)}", flush=True)
        rows[name] = plan_then_train(name.split()[0].lower(), overrides, args.out, args.budget_s)
    print(
        f"\n{'case':22} {'projected s':>11} {'measured s':>10} {'ratio':>6} {'bottleneck':>10} {'plan s':>7}"
    )
    for name, r in rows.items():
        print(f"{name:22} {r['projected']:11.1f} {r['measured']:10.1f} {r['projected'] / r['measured']:6.2f} "
              f"{r['bottleneck']:>10} {r['plan_wall']:7.0f}")  # fmt: skip
    print(
        f"(measured: the median of {args.epochs - 1} epoch(s) after the first, validation and saves included)"
    )


if __name__ == "__main__":
    main()
