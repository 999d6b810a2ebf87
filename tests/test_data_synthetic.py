import io
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.disks import small_disk
from helpers.runs import TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env
from PIL import Image

from delving.data.config import DataConfig
from delving.data.datasets import list_samples
from delving.data.synthetic import (
    COMPLETE_MARKER,
    SyntheticParams,
    SyntheticSpaceError,
    default_root,
    encode_jpeg,
    ensure_synthetic,
    estimated_bytes,
    render_image,
    synthetic_classes,
)


def _tiny(root: Path | None, seed: int = 0) -> DataConfig:
    return DataConfig(
        root=None if root is None else str(root),
        synthetic_classes=4,
        synthetic_train_per_class=3,
        synthetic_val_per_class=2,
        synthetic_min_size=32,
        synthetic_max_size=48,
        synthetic_seed=seed,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generated_twice_byte_identical_in_imagenet_layout(tmp_path):
    first, second = ensure_synthetic(_tiny(tmp_path / "a")), ensure_synthetic(_tiny(tmp_path / "b"))
    assert _files(first) == _files(second)
    samples, classes = list_samples(first, "train")
    assert classes == ["syn0000", "syn0001", "syn0002", "syn0003"] and len(samples) == 12
    assert len(list_samples(first, "val")[0]) == 8
    sizes = {Image.open(p).size for p, _ in samples}
    assert len(sizes) > 6 and all(32 <= min(s) <= 48 for s in sizes)
    assert _files(ensure_synthetic(_tiny(tmp_path / "c", seed=1))) != _files(first)
    assert len((first / "classes.txt").read_text().splitlines()) == 4


def test_classes_are_distinct_combinations():
    params = SyntheticParams(100, 1, 1, 64, 112, 0)
    classes = synthetic_classes(params)
    assert len(set(classes)) == 100
    for factor in ("shape", "hue", "texture", "position"):
        assert len({getattr(c, factor) for c in classes}) > 1
    with pytest.raises(ValueError, match=r"synthetic_classes must be in \[1, 288\]"):
        synthetic_classes(SyntheticParams(300, 1, 1, 64, 112, 0))


def test_a_few_grayscale_and_cmyk_files():
    params = SyntheticParams(1, 1, 1, 32, 32, 0)
    cls = synthetic_classes(params)[0]
    modes = []
    for i in range(600):
        rng = np.random.default_rng(i)
        modes.append(Image.open(io.BytesIO(encode_jpeg(render_image(cls, params, rng), rng))).mode)
    assert 3 <= modes.count("L") <= 20 and 3 <= modes.count("CMYK") <= 20
    assert modes.count("RGB") == 600 - modes.count("L") - modes.count("CMYK")


def test_default_root_is_keyed_by_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("DELVING_DATA_CACHE", str(tmp_path))
    a = default_root(SyntheticParams.from_config(_tiny(None)))
    b = default_root(SyntheticParams.from_config(_tiny(None, seed=1)))
    assert a.parent == tmp_path and a.name.startswith("synthetic-") and a != b


def _generate(root: str, barrier) -> str:
    barrier.wait()
    return str(ensure_synthetic(_tiny(Path(root))))


def test_concurrent_generation_is_safe(tmp_path):
    ctx = mp.get_context("fork")
    barrier = ctx.Manager().Barrier(3)
    with ctx.Pool(3) as pool:
        roots = pool.starmap(_generate, [(str(tmp_path / "set"), barrier)] * 3)
    assert set(roots) == {str(tmp_path / "set")}
    assert (tmp_path / "set" / COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.lock"]  # no temporary folder left
    assert _files(tmp_path / "set") == _files(ensure_synthetic(_tiny(tmp_path / "ref")))


def test_half_written_set_is_never_taken_for_complete(tmp_path):
    (tmp_path / "set" / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a complete synthetic data set"):
        ensure_synthetic(_tiny(tmp_path / "set"))
    stale = tmp_path / ".other.tmp-abc123"
    stale.mkdir()
    ensure_synthetic(_tiny(tmp_path / "other"))
    assert not stale.exists() and (tmp_path / "other" / COMPLETE_MARKER).is_file()


def test_the_estimated_size_is_within_15_percent_of_what_the_set_takes(tmp_path: Path) -> None:
    params = SyntheticParams.from_config(_tiny(None))
    ensure_synthetic(_tiny(tmp_path / "set"))
    taken = sum(-(-p.stat().st_size // 4096) * 4096 for p in (tmp_path / "set").rglob("*") if p.is_file())
    taken += 4096 * sum(1 for p in (tmp_path / "set").rglob("*") if p.is_dir())
    assert 0.85 * taken <= estimated_bytes(params, 4096) <= 1.15 * taken


def test_a_cache_that_fills_up_while_generating_is_one_line_and_keeps_nothing(tmp_path: Path) -> None:
    """The estimate let it start (a disk filled by someone else meanwhile): ENOSPC ends it in one line."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        cfg = _tiny(disk / "set")
        cfg.synthetic_train_per_class = 100
        with pytest.raises(
            SyntheticSpaceError, match=rf"the disk at {disk} is full .* did not fit and was not kept"
        ):
            ensure_synthetic(cfg)
        assert sorted(p.name for p in disk.iterdir()) == ["set.lock"]


@pytest.mark.slow
def test_delving_train_refuses_a_cache_without_room_before_its_run_folder(tmp_path: Path) -> None:
    """It was a Hydra traceback (OSError: No space left on device), exit 1, and a run folder left."""
    with small_disk(tmp_path / "cache", "1m") as cache:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "delving-train"), *TINY_DATA, *TINY_MODEL, *TINY_TRAIN,
             "data.synthetic_train_per_class=100", f"paths.outputs={tmp_path / 'outputs'}"],
            capture_output=True, text=True, cwd=tmp_path, env=cli_env(DELVING_DATA_CACHE=str(cache)), timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: data=synthetic is generated on first use into {cache}/synthetic-"), (
            line
        )
        assert "MB, but its disk has 1.0 MB free" in line and "DELVING_DATA_CACHE" in line, line
        assert not (tmp_path / "outputs").exists() and not list(cache.iterdir())
