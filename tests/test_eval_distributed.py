"""Two gloo processes give exactly the one-process result, and every image is evaluated once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.evaluation import folder_data_config, tiny_model, write_image_folder

from delving.dist import DistributedContext
from delving.evaluation import EvalConfig, evaluate

# 7 images: rank 0 takes 4 and rank 1 takes 3, so an unequal split is exercised (no duplicate padding).
SIZES = [(80, 64), (64, 90), (100, 70), (64, 64), (70, 110), (96, 64), (64, 72)]
EVAL = {"protocol": "multiscale", "scales": [256, 384], "flips": True, "batch_size": 2}


def _ctx(rank: int, world_size: int) -> DistributedContext:
    return DistributedContext(rank, world_size, rank, torch.device("cpu"))


def _failing_worker(rank: int, world_size: int, root: str, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        evaluate(tiny_model(), folder_data_config(Path(root)), EvalConfig(**EVAL), ctx=_ctx(rank, world_size))
    except Exception as exc:  # the test reads what each rank raised
        Path(out, f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world_size: int, root: str, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = tiny_model()
        seen: list[int] = []
        features = model.features
        model.features = torch.nn.Sequential()  # replaced by a counter of the images this rank runs
        model.forward_features = lambda x: (seen.append(x.shape[0]), features(x))[1]  # type: ignore[method-assign]
        result = evaluate(
            model, folder_data_config(Path(root)), EvalConfig(**EVAL), ctx=_ctx(rank, world_size)
        )
        record = {"rank": rank, "runs": sum(seen), "top1": result.top1_error, "top5": result.top5_error}
        Path(out, f"rank{rank}.json").write_text(json.dumps(record))
        if rank == 0:
            np.savez(
                Path(out, "rank0.npz"), probs=result.probs, labels=result.labels, ids=np.array(result.ids)
            )
        else:
            assert result.probs is None and result.ids is None
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", SIZES)
    single = evaluate(tiny_model(), folder_data_config(root), EvalConfig(**EVAL))
    mp.start_processes(
        _worker, args=(2, str(root), str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork"
    )

    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Each rank ran only its share: 4 and 3 images x 2 scales x 2 (image and mirror image).
    assert [r["runs"] for r in records] == [4 * 2 * 2, 3 * 2 * 2]
    assert all((r["top1"], r["top5"]) == (single.top1_error, single.top5_error) for r in records)
    with np.load(tmp_path / "rank0.npz") as gathered:
        assert gathered["ids"].tolist() == single.ids and len(set(single.ids)) == len(SIZES)
        np.testing.assert_array_equal(gathered["labels"], single.labels)
        np.testing.assert_allclose(gathered["probs"], single.probs, atol=1e-6)


@pytest.mark.ddp
def test_a_bad_image_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", SIZES[:4])
    (root / "val" / "class_0" / "zz_empty.JPEG").write_bytes(b"")  # sample 2 of 5: rank 0's second image
    mp.start_processes(
        _failing_worker,
        args=(2, str(root), str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        start_method="fork",
    )
    assert "zz_empty.JPEG: zero-byte file" in (tmp_path / "error0.txt").read_text()
    other = (
        tmp_path / "error1.txt"
    ).read_text()  # the rank that had no bad image stops with rank 0's message
    assert other.startswith("RankFailed: rank 0 failed") and "zz_empty.JPEG: zero-byte file" in other


def _worker_on_own_root(rank: int, world_size: int, roots: list[str], init_file: str, out: str) -> None:
    """Each rank evaluates its own copy of the data set (a node's local disk)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        evaluate(
            tiny_model(),
            folder_data_config(Path(roots[rank])),
            EvalConfig(**EVAL),
            ctx=_ctx(rank, world_size),
        )
        Path(out, f"error{rank}.txt").write_text("evaluated")
    except Exception as exc:
        Path(out, f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ranks_that_list_different_images_stop_before_evaluating(tmp_path: Path) -> None:
    """Rank 0 names the gathered predictions with its own listing: with one image swapped on rank 1, rank 1's
    predictions were credited to rank 0's image ids."""
    import shutil

    root0 = write_image_folder(tmp_path / "node0", SIZES)
    root1 = tmp_path / "node1"
    shutil.copytree(root0, root1)
    first = sorted((root1 / "val" / "class_1").iterdir())[0]
    swapped = first.rename(first.with_name(f"{first.stem}b{first.suffix}"))  # the same place in the order
    mp.start_processes(
        _worker_on_own_root,
        args=(2, [str(root0), str(root1)], str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        start_method="fork",
    )
    errors = [(tmp_path / f"error{rank}.txt").read_text() for rank in range(2)]
    assert errors[0] == errors[1], errors  # both stop, with the same line
    assert errors[0].startswith(
        "RanksSeeDifferentDataError: the ranks see different data, split 'val': rank(s) 1"
    )
    assert f"'class_1/{first.name}' (label 1) vs 'class_1/{swapped.name}' (label 1)" in errors[0]
