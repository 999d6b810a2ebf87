"""Dense multi-view testing on feature maps vs cropping the same views one by one, side by side.

For each image (shorter side resized to --scale), the dense path runs the convs once on the whole image
and once on its mirror image, then SPP + fc on every window of the last map (the evaluator's code). The
crop path cuts views out of the same resized image and runs the full net on each, batch 1:
  - "10-view-equivalent": the 10 views of dense's corner and centre windows (image + mirror image);
  - "all windows": every window dense scores (image + mirror image).
Dense always scores every window, so its one time serves both rows. Prints the speed-up ratios.

  .venv/bin/python scripts/bench_eval.py                   # model A (full width), 224 crops, scale 256
  .venv/bin/python scripts/bench_eval.py --width 0.25 --all-windows
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from delving.data.config import DataConfig
from delving.data.transforms import resize_shorter, to_model_input
from delving.evaluation.evaluator import job_probabilities
from delving.models import create_net


def _images(count: int, width: int, height: int, scale: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    cfg = DataConfig()
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
        out.append(to_model_input(resize_shorter(image, scale), cfg)[None])
    return out


def _window_offsets(model: torch.nn.Module, image: torch.Tensor, ten_view: bool) -> list[tuple[int, int]]:
    """Pixel (top, left) of the crop matching each window of the last map (window cell x feature stride)."""
    with torch.no_grad():
        rows, cols = model.forward_dense(image).shape[1:3]
    if ten_view:
        cells = [(rows // 2, cols // 2), (0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1)]
    else:
        cells = [(r, c) for r in range(rows) for c in range(cols)]
    return [(r * model.feature_stride, c * model.feature_stride) for r, c in cells]


@torch.inference_mode()
def _crops_one_by_one(
    model: torch.nn.Module, image: torch.Tensor, offsets: list[tuple[int, int]]
) -> torch.Tensor:
    size = model.input_size
    probs = [
        F.softmax(model(view[..., top : top + size, left : left + size].contiguous()), 1)
        for view in (image, image.flip(-1))
        for top, left in offsets
    ]
    return torch.cat(probs).mean(0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_times(paths: dict[str, object], images: list[torch.Tensor], rounds: int) -> dict[str, float]:
    """Median over rounds of the mean seconds per image; paths alternate image by image, so a busy
    machine slows them alike instead of skewing the ratio."""
    for run in paths.values():
        run(images[0])  # warm-up: allocator and kernel selection
    per_round: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        spent = dict.fromkeys(paths, 0.0)
        for image in images:
            for name, run in paths.items():
                _sync(image.device)
                start = time.perf_counter()
                run(image)
                _sync(image.device)
                spent[name] += time.perf_counter() - start
        for name in paths:
            per_round[name].append(spent[name] / len(images))
    return {name: float(np.median(times)) for name, times in per_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="model_a")
    parser.add_argument("--width", type=float, default=1.0, help="conv/fc width multiplier")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--scale", type=int, default=256, help="shorter side of the test image")
    parser.add_argument("--image-size", default="500x375", help="generated image WxH before the resize")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--all-windows", action="store_true", help="also crop every window one by one (slow)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_net(args.model, width=args.width).eval().to(device)
    width, height = (int(v) for v in args.image_size.split("x"))
    images = [image.to(device) for image in _images(args.images, width, height, args.scale)]
    ten = _window_offsets(model, images[0], ten_view=True)
    every = _window_offsets(model, images[0], ten_view=False)

    paths = {
        "dense": lambda x: job_probabilities(model, x, flips=True),
        "ten": lambda x: _crops_one_by_one(model, x, ten),
    }
    if args.all_windows:
        paths["all"] = lambda x: _crops_one_by_one(model, x, every)
    seconds = _interleaved_times(paths, images, args.rounds)
    shape = "x".join(str(s) for s in images[0].shape[-2:])
    print(
        f"{args.model} width {args.width}, crop {model.input_size}, image {args.image_size} -> {shape} (scale "
        f"{args.scale}), {args.images} images x {args.rounds} rounds, {args.threads} threads, "
        f"torch {torch.__version__}, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
    )
    print("| path | views per image | s per image (median of rounds) | dense speed-up |")
    print("|---|---|---|---|")
    dense = seconds["dense"]
    print(f"| dense (convs on image + mirror, every window) | {2 * len(every)} | {dense:.3f} | 1.00x |")
    rows = [
        ("ten", "10-view-equivalent crops, one by one", ten),
        ("all", "all-window crops, one by one", every),
    ]
    for key, label, views in rows:
        if key in seconds:
            print(f"| {label} | {2 * len(views)} | {seconds[key]:.3f} | {seconds[key] / dense:.2f}x |")


if __name__ == "__main__":
    main()
