"""Writes a folder data set (root/<split>/<class>/<images>) as WebDataset tar shards for data=shards.

    python scripts/make_shards.py /data/imagenet /data/imagenet-shards [--splits train val] [--max-samples 1000]

Then train with `data=shards data.root=/data/imagenet-shards`. The image bytes are stored as they are (no
re-encoding), in a shuffled order, with <split>.json (classes, member offsets, labels) written last.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from delving.data.datasets import check_same_classes
from delving.data.shards import write_shards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="the folder data set's root")
    parser.add_argument("target", type=Path, help="where the shards go (data.root for data=shards)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--max-samples", type=int, default=1000, help="images per shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order in which images are written")
    args = parser.parse_args(argv)
    if len(args.splits) > 1:
        for split in args.splits[1:]:
            check_same_classes(args.source, args.splits[0], split)
    for split in args.splits:
        index = write_shards(args.source, split, args.target, args.max_samples, args.seed)
        print(f"{split}: {index}")


if __name__ == "__main__":
    main()
