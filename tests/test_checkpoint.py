"""The one checkpoint format: resume refusals name what differs, corrupt files are refused, writes are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.runs import run_train

from delving.checkpoint import Checkpoint, CheckpointError, check_resumable
from delving.io import atomic_write_text


def _config_copy(checkpoint: Checkpoint) -> dict:
    return json.loads(json.dumps(checkpoint.config))


@pytest.mark.ddp
def test_resume_refuses_another_model(ddp_runs: dict[str, Path]) -> None:
    state = Checkpoint.load(ddp_runs["one_proc"] / "last.pt")
    other = _config_copy(state)
    other["model"]["name"] = "net30"
    with pytest.raises(
        CheckpointError, match=r"another model.*model.name: checkpoint 'net14' vs run 'net30'"
    ):
        check_resumable(state, other, "last.pt")


@pytest.mark.ddp
def test_resume_refuses_another_schedule(ddp_runs: dict[str, Path]) -> None:
    """Fewer epochs, or more under a schedule drawn over the total (cosine), is another schedule; more epochs
    of a constant, milestones or plateau schedule extends the run (tests/test_engine_knobs.py)."""
    state = Checkpoint.load(ddp_runs["one_proc"] / "last.pt")
    shorter = _config_copy(state)
    shorter["train"]["epochs"] = 1
    with pytest.raises(CheckpointError, match=r"another schedule.*train.epochs: 2 -> 1"):
        check_resumable(state, shorter, "last.pt")
    longer = _config_copy(state)
    longer["train"]["epochs"] = 5
    check_resumable(state, longer, "last.pt")
    longer["sched"]["name"] = "cosine"
    with pytest.raises(CheckpointError, match=r"another schedule.*sched.name: 'constant' -> 'cosine'.*"
                       r"train.epochs: 2 -> 5"):  # fmt: skip
        check_resumable(state, longer, "last.pt")


@pytest.mark.ddp
def test_resume_refuses_a_changed_recipe_naming_every_key(ddp_runs: dict[str, Path]) -> None:
    state = Checkpoint.load(ddp_runs["one_proc"] / "last.pt")
    changed = _config_copy(state)
    changed["optim"]["lr"], changed["seed"], changed["data"]["crop_size"] = 0.1, 7, 20
    changed["logger"]["log_every_steps"], changed["data"]["root"] = 99, "/elsewhere"  # these may change
    with pytest.raises(CheckpointError) as error:
        check_resumable(state, changed, "last.pt")
    message = str(error.value)
    for change in ("data.crop_size: 24 -> 20", "optim.lr: 0.01 -> 0.1", "seed: 0 -> 7"):
        assert change in message
    assert "logger" not in message and "data.root" not in message


@pytest.mark.ddp
def test_a_truncated_checkpoint_is_refused_and_kept(ddp_runs: dict[str, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "last.pt"
    corrupt.write_bytes((ddp_runs["one_proc"] / "last.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="unreadable"):
        Checkpoint.load(corrupt)
    result = run_train(tmp_path, ["resume=auto"], check=False)
    assert result.returncode != 0 and "unreadable" in result.stderr
    assert corrupt.stat().st_size == 1000  # nothing overwritten


def test_a_pickled_object_is_never_loaded_and_the_advice_to_load_it_unsafely_is_not_passed_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {"model": {}}, "payload": object()}, path)
    with pytest.raises(CheckpointError) as error:
        Checkpoint.load(path)
    assert "weights_only" not in str(error.value) and "never unpickles" in str(error.value)


def test_the_first_trainer_format_still_loads(tmp_path: Path) -> None:
    counters = {"epoch": 2, "step_in_epoch": 0, "global_step": 12, "best": []}
    torch.save(
        {"format_version": 1, "model": {}, "config": {"model": {}}, "world_size": 1, **counters},
        tmp_path / "v1.pt",
    )
    loaded = Checkpoint.load(tmp_path / "v1.pt")
    assert loaded.train_state == counters and loaded.classes is None


def test_atomic_write_honours_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        path = atomic_write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o664  # mkstemp would give 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]  # no temp file left


class _FakeGpus:
    """torch.cuda with `count` visible devices whose generators are CPU torch.Generators (same state format):
    the calls a checkpoint makes, indexing the devices as torch does (IndexError past the last one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.generators = [torch.Generator().manual_seed(100 + i) for i in range(count)]
        for module in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(module, "device_count", lambda: count, raising=False)
            monkeypatch.setattr(module, "get_rng_state", self.get_state, raising=False)
            monkeypatch.setattr(module, "set_rng_state", self.set_state, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def _index(self, device: int | str | torch.device = "cuda") -> int:
        device = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        return 0 if device.index is None else device.index

    def get_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.generators[self._index(device)].get_state()

    def set_state(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.generators[self._index(device)].set_state(state)

    def draws(self, index: int) -> torch.Tensor:
        """What dropout on cuda:<index> would draw next."""
        return torch.rand(5, generator=self.generators[index])


def test_a_rank_resumes_its_own_gpus_generator_under_another_count_of_visible_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torchrun/submitit show each rank 8 GPUs, one GPU per task shows 1: rank 3 is on cuda:3, then on cuda:0."""
    from delving.checkpoint import capture_rng_state, restore_rng_state

    eight = _FakeGpus(monkeypatch, 8)
    eight.draws(3)  # rank 3 has trained a while on cuda:3
    saved = capture_rng_state(torch.device("cuda:3"))
    assert set(saved) >= {"cuda_device"} and "cuda" not in saved  # one state, not one per visible GPU
    expected = eight.draws(3)  # what an uninterrupted run draws next

    one = _FakeGpus(monkeypatch, 1)
    restore_rng_state(saved, torch.device("cuda:0"), local_rank=3)
    assert torch.equal(one.draws(0), expected)

    saved_on_one = capture_rng_state(torch.device("cuda:0"))
    expected = one.draws(0)
    eight = _FakeGpus(monkeypatch, 8)
    untouched = eight.generators[0].get_state()
    restore_rng_state(saved_on_one, torch.device("cuda:3"), local_rank=3)
    assert torch.equal(eight.draws(3), expected)
    assert torch.equal(eight.generators[0].get_state(), untouched)  # not cuda:0's: rank 0 draws there


def test_checkpoints_with_one_state_per_visible_gpu_still_resume_on_the_ranks_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from delving.checkpoint import capture_rng_state, restore_rng_state

    old_eight = {
        **capture_rng_state(),
        "cuda": [torch.Generator().manual_seed(i).get_state() for i in range(8)],
    }
    old_eight.pop("cuda_device")
    one = _FakeGpus(monkeypatch, 1)
    restore_rng_state(old_eight, torch.device("cuda:0"), local_rank=5)  # 8 -> 1: no IndexError
    assert torch.equal(one.generators[0].get_state(), old_eight["cuda"][5])

    old_one = {**old_eight, "cuda": [torch.Generator().manual_seed(42).get_state()]}
    eight = _FakeGpus(monkeypatch, 8)
    restore_rng_state(old_one, torch.device("cuda:5"), local_rank=5)  # 1 -> 8: lands on the rank's device
    assert torch.equal(eight.generators[5].get_state(), old_one["cuda"][0])
    assert not torch.equal(eight.generators[0].get_state(), old_one["cuda"][0])

    cpu_run = _FakeGpus(monkeypatch, 8)
    before = [g.get_state() for g in cpu_run.generators]
    restore_rng_state(old_eight, torch.device("cpu"), local_rank=0)  # a CPU run leaves the GPUs alone
    assert all(torch.equal(g.get_state(), b) for g, b in zip(cpu_run.generators, before, strict=True))


class _OnGpu(torch.Tensor):
    """A tensor that says it lives on cuda:0 (as a GPU run's weights do); .cpu() gives the plain CPU tensor."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 0)

    def cpu(self) -> torch.Tensor:  # type: ignore[override]
        return self.as_subclass(torch.Tensor)


def test_checkpoints_are_saved_with_cpu_tensors(tmp_path: Path) -> None:
    """A GPU run's tensors are copied to the CPU before torch.save: a plain torch.load reads the file anywhere."""
    weight = torch.arange(6.0).view(2, 3).as_subclass(_OnGpu)
    assert weight.device.type == "cuda"
    checkpoint = Checkpoint(
        model={"fc.weight": weight},
        config={"model": {}},
        optimizer={"state": {0: {"momentum_buffer": weight * 1}}, "param_groups": [{"params": [0]}]},
    )
    checkpoint.save(tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # no map_location
    for tensor in (state["model"]["fc.weight"], state["optimizer"]["state"][0]["momentum_buffer"]):
        assert type(tensor) is torch.Tensor and tensor.device.type == "cpu"
        assert torch.equal(tensor, torch.arange(6.0).view(2, 3))


def test_load_model_records_the_sha256_of_the_bytes_it_loaded(tmp_path: Path, monkeypatch) -> None:
    """A last.pt replaced (renamed over) right after the load: the hash is still the loaded file's (it was the
    replacement's, from a second open)."""
    from helpers.evaluation import TINY_MODEL, save_checkpoint, tiny_model

    from delving import checkpoint as checkpoint_module
    from delving.checkpoint import file_sha256, load_model

    path = save_checkpoint(tmp_path / "last.pt", tiny_model(seed=0), dict(TINY_MODEL), {"name": "synthetic"})
    loaded_sha = file_sha256(path)
    newer = save_checkpoint(
        tmp_path / "newer.pt", tiny_model(seed=1), dict(TINY_MODEL), {"name": "synthetic"}
    )
    real_load = torch.load

    def load_then_replace(*args, **kwargs):
        state = real_load(*args, **kwargs)
        os.replace(newer, path)  # the run saves its next last.pt now
        return state

    monkeypatch.setattr(checkpoint_module.torch, "load", load_then_replace)
    model, _, sha256 = load_model(path)
    assert sha256 == loaded_sha != file_sha256(path)
    assert torch.equal(
        model.state_dict()["head.fc3.weight"], tiny_model(seed=0).state_dict()["head.fc3.weight"]
    )
