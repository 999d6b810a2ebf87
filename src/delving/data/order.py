"""The one sample order every copy of a data set shares, and the epoch's permutation of it.

A copy stores its samples in its own order (folders by name, our shards shuffled, the hub's shards and parquet
files in their converters' orders). Every reader sorts its index into the canonical order (class index, then
the file name: the image's name in ImageNet's folder layout), so a permutation drawn from (seed, epoch) picks
the same images from every copy of the same images, and a run can move from one copy to another.
"""

from __future__ import annotations

import numpy as np

from delving.data.index import PackedStrings


def canonical_order(labels: np.ndarray, names: PackedStrings) -> np.ndarray:
    """Positions that sort the samples by (label, name bytes): the folder layout's order, whatever the copy."""
    lengths = np.diff(names.offsets)
    width = int(lengths.max()) if len(lengths) else 0
    # Fixed-width byte strings (zero-padded) compare as the names do byte by byte, and sort in C.
    padded = np.zeros((len(lengths), max(width, 1)), dtype=np.uint8)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    columns = np.arange(len(names.blob)) - np.repeat(names.offsets[:-1], lengths)
    padded[rows, columns] = names.blob
    keys = padded.view(f"S{max(width, 1)}").ravel()
    return np.lexsort((keys, labels)).astype(np.int64)


def epoch_permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's global order of the canonical positions: one permutation from (seed, epoch)."""
    return np.random.default_rng((seed, epoch, 0)).permutation(count)


def sorted_index(
    arrays: dict[str, np.ndarray], strings: dict[str, list[bytes]], names: str
) -> dict[str, np.ndarray]:
    """A freshly built index (columns in storage order, `strings[names]` the file names) sorted into the
    canonical order, the string columns packed as `<column>_blob`/`<column>_offsets`: what is stored."""
    order = canonical_order(arrays["labels"], PackedStrings.from_bytes(strings[names]))
    result = {column: np.ascontiguousarray(values[order]) for column, values in arrays.items()}
    for column, values in strings.items():
        packed = PackedStrings.from_bytes([values[i] for i in order])
        result[f"{column}_blob"], result[f"{column}_offsets"] = packed.blob, packed.offsets
    return result


def packed(arrays: dict[str, np.ndarray], column: str) -> PackedStrings:
    return PackedStrings(arrays[f"{column}_blob"], arrays[f"{column}_offsets"])
