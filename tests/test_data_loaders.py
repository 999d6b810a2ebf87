import logging
import os
import warnings

import pytest
import torch
from helpers.data import make_folder_dataset, tiny_config, write_jpeg

from delving.data import loaders
from delving.data.decode import TooManyBadImagesError
from delving.data.loaders import EvalLoader, TrainLoader
from delving.data.transforms import EvalTransform


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("ds"), classes=3, train_per_class=12, val_per_class=5)


def _epoch(loader: TrainLoader, epoch: int, start_step: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch, start_step))


def test_two_ranks_with_half_batches_equal_one_rank(dataset):
    cfg = tiny_config(dataset)
    single = TrainLoader(cfg, batch_size=8, seed=5)
    halves = [TrainLoader(cfg, batch_size=4, rank=r, world_size=2, seed=5) for r in range(2)]
    assert single.steps_per_epoch == halves[0].steps_per_epoch == halves[1].steps_per_epoch == 36 // 8
    assert single.num_classes == 3 and single.classes == ["c0", "c1", "c2"]
    full = _epoch(single, 1)
    parts = [_epoch(h, 1) for h in halves]
    for step, (images, labels) in enumerate(full):
        assert (
            images.shape == (8, 3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
        )
        assert torch.equal(images, torch.cat([parts[0][step][0], parts[1][step][0]]))
        assert torch.equal(labels, torch.cat([parts[0][step][1], parts[1][step][1]]))


def test_every_rank_gets_the_same_number_of_full_batches(dataset):
    cfg = tiny_config(dataset)
    loaders = [TrainLoader(cfg, batch_size=5, rank=r, world_size=3, seed=0) for r in range(3)]
    counts = [[len(labels) for _, labels in loader.epoch(0)] for loader in loaders]
    assert counts == [[5, 5], [5, 5], [5, 5]]  # 36 samples // 15 per global step = 2, tail of 6 dropped


def test_epoch_is_a_permutation_and_changes_with_epoch_and_seed(dataset):
    cfg = tiny_config(dataset, pca_lighting_std=0.0, flip=False)
    loader = TrainLoader(cfg, batch_size=12, seed=1)
    labels = torch.cat([labels for _, labels in loader.epoch(0)])
    assert sorted(labels.tolist()) == [0] * 12 + [1] * 12 + [2] * 12  # batch 12 divides 36: every sample once
    again = torch.cat([labels for _, labels in loader.epoch(0)])
    assert torch.equal(labels, again)
    assert not torch.equal(labels, torch.cat([labels for _, labels in loader.epoch(1)]))
    other_seed = TrainLoader(cfg, batch_size=12, seed=2)
    assert not torch.equal(labels, torch.cat([labels for _, labels in other_seed.epoch(0)]))


def test_workers_and_resume_do_not_change_the_batches(dataset):
    cfg0 = tiny_config(dataset)
    reference = _epoch(TrainLoader(cfg0, batch_size=6, seed=3), 2)
    with_workers = TrainLoader(tiny_config(dataset, num_workers=2, prefetch_factor=2), batch_size=6, seed=3)
    for epoch_batches in (_epoch(with_workers, 2), _epoch(with_workers, 2)):  # persistent workers, twice
        assert len(epoch_batches) == len(reference) == 6
        for (a, la), (b, lb) in zip(reference, epoch_batches, strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)
    tail = _epoch(TrainLoader(cfg0, batch_size=6, seed=3), 2, start_step=4)
    assert len(tail) == 2
    for (a, la), (b, lb) in zip(reference[4:], tail, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_workers_are_capped_at_the_cores_and_that_is_said_once(dataset, monkeypatch, caplog):
    """data=folder's 4 workers on a 2-core machine: 2 workers, one line, and no torch warning per loader."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    monkeypatch.setattr(loaders, "_CAPS_SAID", set())
    cfg = tiny_config(dataset, num_workers=4)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="delving"):
        warnings.simplefilter("error")  # torch: "This DataLoader will create 4 worker processes in total..."
        train = TrainLoader(cfg, batch_size=6, seed=3)
        val = EvalLoader(cfg, "val", batch_size=4)
        assert len(_epoch(train, 0)) == 6 and len(torch.cat([labels for _, labels in val])) == 15
    assert train._loader.num_workers == val._loader.num_workers == 2
    train.close()
    val.close()
    said = [r.getMessage() for r in caplog.records if "data.num_workers=4" in r.getMessage()]
    assert said == ["data.num_workers=4, but this process may use 2 CPU cores: 2 loader workers (set "
                    "data.num_workers=2 to say so yourself)"]  # fmt: skip
    assert loaders.usable_workers(2) == 2 and loaders.usable_workers(0) == 0


def test_eval_loader_covers_every_image_exactly_once(dataset):
    cfg = tiny_config(dataset)
    loaders = [EvalLoader(cfg, "val", batch_size=4, rank=r, world_size=4) for r in range(4)]
    assert all(loader.num_samples == 15 for loader in loaders)
    per_rank = [torch.cat([labels for _, labels in loader]) for loader in loaders]
    assert [len(labels) for labels in per_rank] == [4, 4, 4, 3]  # no padding
    assert sorted(torch.cat(per_rank).tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    images, labels = next(iter(loaders[1]))
    first = EvalTransform(cfg)(dataset / "val" / "c0" / "001.JPEG")  # sample 1 -> rank 1's first
    assert images.shape == (4, 3, 16, 16) and torch.equal(images[0], first) and labels[0] == 0


@pytest.fixture()
def dataset_with_bad_files(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", classes=3, train_per_class=10, val_per_class=2)
    (root / "train" / "c0" / "003.JPEG").write_bytes(b"")  # zero-byte
    data = (root / "train" / "c1" / "005.JPEG").read_bytes()
    (root / "train" / "c1" / "005.JPEG").write_bytes(data[: len(data) * 3 // 4])  # truncated after the header
    write_jpeg(root / "train" / "c2" / "007.JPEG", 40, 30, seed=9, fmt="PNG")  # readable PNG named .JPEG
    write_jpeg(root / "train" / "c2" / "008.JPEG", 40, 30, seed=9, mode="CMYK")  # readable CMYK
    return root


def test_bad_files_are_replaced_counted_and_logged_once(dataset_with_bad_files, caplog):
    loader = TrainLoader(tiny_config(dataset_with_bad_files, max_bad_fraction=0.1), batch_size=30, seed=0)
    with caplog.at_level(logging.WARNING, logger="delving.data.loaders"):
        for epoch in range(2):
            batches = _epoch(loader, epoch)
            assert [len(labels) for _, labels in batches] == [30]  # the batch keeps its size
            # Replacement is the next file in the listing: c0/004 for c0/003 (class 0), c1/006 for c1/005.
            assert sorted(batches[0][1].tolist()) == [0] * 10 + [1] * 10 + [2] * 10
    assert loader.bad_files.skipped == 4 and loader.bad_files.reads == 64
    warnings = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert len(warnings) == 2
    assert any("003.JPEG (zero-byte file)" in w for w in warnings)
    assert any("005.JPEG" in w and "truncated" in w.lower() for w in warnings)


def test_too_many_bad_files_stop_the_run(dataset_with_bad_files):
    loader = TrainLoader(tiny_config(dataset_with_bad_files, max_bad_fraction=0.05), batch_size=30, seed=0)
    with pytest.raises(TooManyBadImagesError, match=r"2 unreadable images skipped out of 32 read"):
        _epoch(loader, 0)  # 2 > 0.05 * 32
    with_workers = TrainLoader(
        tiny_config(dataset_with_bad_files, max_bad_fraction=0.05, num_workers=2), batch_size=10, seed=0
    )
    with pytest.raises(TooManyBadImagesError):
        _epoch(with_workers, 0)


def test_eval_loader_drops_bad_images(dataset_with_bad_files):
    root = dataset_with_bad_files
    (root / "val" / "c1" / "000.JPEG").write_bytes(b"")
    loader = EvalLoader(tiny_config(root, max_bad_fraction=0.5), "val", batch_size=4)
    for _ in range(2):  # the count is per pass
        labels = torch.cat([labels for _, labels in loader])
        assert sorted(labels.tolist()) == [0, 0, 1, 2, 2] and loader.skipped == 1 and loader.num_samples == 6


def _per_sample_reference(loader: TrainLoader, cfg, epoch: int) -> list[torch.Tensor]:
    """Each batch as the per-sample path builds it: TrainTransform's float32 model input, image by image."""
    from delving.data.readers import open_split
    from delving.data.transforms import TrainTransform, sample_rng

    reader, _ = open_split(cfg, cfg.train_split)
    transform = TrainTransform(cfg)
    loader.batches.set_epoch(epoch, 0)
    return [
        torch.stack([transform(reader.source(i), transform.draws(sample_rng(5, e, i))) for e, i in batch])
        for batch in loader.batches
    ]


@pytest.mark.parametrize("normalize", ["mean", "mean_std", "mean_image"])
def test_uint8_workers_and_the_batched_normalizer_equal_the_per_sample_path(dataset, tmp_path, normalize):
    import numpy as np

    mean_file = tmp_path / "mean.npy"
    np.save(mean_file, np.random.default_rng(0).uniform(60, 180, (16, 16, 3)).astype(np.float32))
    cfg = tiny_config(
        dataset, normalize=normalize, mean_image=str(mean_file), pca_lighting_std=0.1, num_workers=2
    )
    loader = TrainLoader(cfg, batch_size=6, seed=5)
    ours = [images for images, _ in loader.epoch(1)]
    reference = _per_sample_reference(loader, cfg, 1)
    assert len(ours) == len(reference) == 6
    for batch, expected in zip(ours, reference, strict=True):
        assert batch.dtype == torch.float32
        assert torch.equal(batch, expected)  # the same float32 operations: equal to the bit
    loader.close()
    evaluation = EvalLoader(cfg, "val", batch_size=4)
    images = torch.cat([images for images, _ in evaluation])
    expected = torch.stack(
        [EvalTransform(cfg)(evaluation._loader.dataset.reader.source(i)) for i in range(15)]
    )
    assert torch.equal(images, expected)


def test_workers_send_uint8_crops_and_the_mean_image_is_read_once(dataset, tmp_path, monkeypatch):
    import numpy as np

    from delving.data import loaders, normalize

    mean_file = tmp_path / "mean.npy"
    np.save(mean_file, np.full((16, 16, 3), 100.0, dtype=np.float32))
    reads = []
    real_load = normalize.load_mean_image
    monkeypatch.setattr(normalize, "load_mean_image", lambda cfg: reads.append(1) or real_load(cfg))
    cfg = tiny_config(dataset, normalize="mean_image", mean_image=str(mean_file))
    loader = TrainLoader(cfg, batch_size=6, seed=0)
    (crops, shifts), _, _ = loaders._collate_train([loader._loader.dataset[(0, i)] for i in range(3)])
    assert crops.dtype == torch.uint8 and crops.shape == (3, 3, 16, 16) and shifts.shape == (3, 3)
    for _ in loader.epoch(0):
        pass
    for _ in EvalLoader(cfg, "val", batch_size=4):
        pass
    assert len(reads) == 2  # one per loader, none per sample or batch


class _CountingOrder:
    def __init__(self, reader) -> None:
        self.reader, self.calls = reader, 0

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def __len__(self) -> int:
        return len(self.reader)

    def epoch_order(self, seed, epoch):
        self.calls += 1
        return self.reader.epoch_order(seed, epoch)


def test_the_sampler_draws_each_epochs_order_once(dataset):
    loader = TrainLoader(tiny_config(dataset, num_workers=2), batch_size=6, seed=0)
    counting = _CountingOrder(loader.batches.reader)
    loader.batches.reader = counting
    for epoch in range(2):
        assert sum(len(labels) for _, labels in loader.epoch(epoch)) == 36
    assert counting.calls == 2  # DataLoader calls iter() twice on its first epoch: the second one only runs
    loader.close()


EXIT_WITH_AN_OPEN_ITERATOR = """
import sys, time
sys.path.insert(0, {tests!r})
from helpers.data import tiny_config
from delving.data.loaders import TrainLoader
loader = TrainLoader(tiny_config({root!r}, num_workers=2), batch_size=6, seed=0)
batches = loader.epoch(0)
next(batches)
print("one batch", flush=True)
"""


@pytest.mark.slow
def test_a_script_that_exits_with_a_loader_iterator_open_ends(dataset):
    import subprocess
    import sys
    from pathlib import Path

    script = EXIT_WITH_AN_OPEN_ITERATOR.format(tests=str(Path(__file__).parent), root=str(dataset))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "one batch" in result.stdout


SIGTERM_WITH_OPEN_WORKERS = """
import multiprocessing, sys
sys.path.insert(0, {tests!r})
from helpers.data import tiny_config
from delving.data.loaders import EvalLoader, TrainLoader

if __name__ == "__main__":
    multiprocessing.set_start_method({method!r})
    train = TrainLoader(tiny_config({root!r}, num_workers=2), batch_size=2)
    evaluation = EvalLoader(tiny_config({root!r}, num_workers=1), "val", batch_size=2)
    next(train.epoch(0))
    next(iter(evaluation))
    pids = [w.pid for loader in (train, evaluation) for w in loader._loader._iterator._workers]
    from multiprocessing import forkserver
    server = getattr(forkserver._forkserver, "_forkserver_pid", None)
    print("pids", *pids, *([server] if server else []), flush=True)
    import time
    time.sleep(600)
"""


@pytest.mark.slow
def test_loader_workers_end_with_the_script_that_owns_them_under_forkserver(dataset, tmp_path):
    """SIGTERM to a script with no handler ends it at once (no atexit). Its workers ignore SIGTERM and, under
    forkserver, are the fork server's children, which in turn lives as long as they do: before, the server
    and the workers outlived the script for good."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "script.py"  # a file: forkserver's workers import the main module
    script.write_text(
        SIGTERM_WITH_OPEN_WORKERS.format(
            tests=str(Path(__file__).parent), root=str(dataset), method="forkserver"
        )
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        line = process.stdout.readline()
        assert line.startswith("pids "), line
        pids = [int(pid) for pid in line.split()[1:]]
        assert len(pids) == 4  # 2 + 1 workers and the fork server
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(pid) for pid in pids):
            time.sleep(0.1)
        assert [pid for pid in pids if _running(pid)] == []
    finally:
        process.kill()
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has ended; it waits only for its parent to read its status)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _copies_to_a_device(monkeypatch) -> list[tuple[tuple, bool]]:
    """Every Tensor.to call that names a device, with whether it is non-blocking (dtype-only casts are not
    copies between host and device)."""
    calls: list[tuple[tuple, bool]] = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, torch.device | str | torch.Tensor):
            calls.append((tuple(self.shape), bool(kwargs.get("non_blocking", False))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    return calls


@pytest.mark.parametrize("path", ["pillow", "decode_on_device"])
@pytest.mark.parametrize("normalize", ["mean", "mean_std"])
def test_every_copy_of_the_input_path_to_the_device_is_non_blocking(dataset, monkeypatch, path, normalize):
    """On a GPU a blocking copy (the lighting shift, the mean, the std) waits for the previous step's work at
    every batch; here, on the CPU, the same calls are checked: each names non_blocking=True."""
    cfg = tiny_config(dataset, normalize=normalize, decode_on_device=path == "decode_on_device")
    train = TrainLoader(cfg, batch_size=6, seed=0)
    val = EvalLoader(cfg, "val", batch_size=5)
    calls = _copies_to_a_device(monkeypatch)  # from here on: the per-batch work
    batches = [images for images, _ in train.epoch(0)] + [images for images, _ in val]
    assert len(batches) == train.steps_per_epoch + len(val) and all(b.dtype == torch.float32 for b in batches)
    shifts = [shape for shape, _ in calls if shape == (6, 3)]
    assert len(shifts) == train.steps_per_epoch  # the lighting shift of every training batch is among them
    assert calls and all(non_blocking for _, non_blocking in calls), [c for c in calls if not c[1]]
