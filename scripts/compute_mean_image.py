"""Computes the training set's mean image for data.normalize=mean_image and stores it beside the data set.

    python scripts/compute_mean_image.py data=imagenet data.root=/datasets/imagenet [--limit N]
    python scripts/compute_mean_image.py experiment=table4_model_a_prelu_mini      # the mini's synthetic set

The arguments are delving-train overrides: the data config they compose (crop size, test scale, root) is the
one the mean is taken with (centre views of the training split, full-size decode). Writes
<data root>/mean_image.npy, or data.mean_image= when given. Then train with data.normalize=mean_image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from hydra import compose, initialize_config_dir

from delving.config import register_all
from delving.config_files import config_dir
from delving.data.config import as_data_config
from delving.data.mean_image import compute_mean_image, mean_image_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="delving-train overrides (data=..., data.root=...)")
    parser.add_argument("--limit", type=int, default=None, help="average only the first N training images")
    args = parser.parse_args(argv)
    register_all()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = as_data_config(compose(config_name="train", overrides=args.overrides).data)
    start = time.perf_counter()
    mean = compute_mean_image(cfg, args.limit)
    path = mean_image_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, mean)
    tmp.replace(path)
    colour = ", ".join(f"{v:.2f}" for v in mean.reshape(-1, 3).mean(0))
    print(
        f"{path}: {mean.shape[0]}x{mean.shape[1]} mean image (mean colour {colour}) in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
