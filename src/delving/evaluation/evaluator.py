"""Evaluate a model on a folder data set with one of the paper's test protocols, on one rank or many.

Every image becomes one job per (scale, view); a job's probability is the softmax averaged over the
windows of its last feature map (one window for a crop) and over its flip. An image's probability is
the mean over its jobs, so each scale (and each of the ten views) weighs the same whatever its window
count. Jobs of equal shape share a batch (shape buckets), so images of different sizes never need
padding and are not run one by one. Ranks take images rank, rank + world_size, ...: each image once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from delving.data.datasets import class_names, list_samples, resolve_root
from delving.data.decode import decode_image
from delving.data.transforms import resize_shorter, to_model_input
from delving.evaluation.config import EvalConfig, Protocol, effective_scales
from delving.evaluation.metrics import topk_errors
from delving.evaluation.predictions import Predictions
from delving.evaluation.views import CROPS_PER_SCALE, image_views
from delving.models import SPPNet

_CPU = torch.device("cpu")


@dataclass
class EvalResult:
    """Errors in percent. ids, labels and probs (float32, in data set order) are set on rank 0 only."""

    top1_error: float
    top5_error: float
    num_images: int
    metadata: dict[str, Any] = field(default_factory=dict)
    ids: list[str] | None = None
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None

    def predictions(self) -> Predictions:
        if self.ids is None or self.labels is None or self.probs is None:
            raise RuntimeError("only rank 0 holds the gathered predictions")
        dtype = np.float16 if self.metadata.get("probs_dtype") == "float16" else np.float32
        return Predictions(np.asarray(self.ids), self.labels, self.probs.astype(dtype), dict(self.metadata))


def _split_folder(data_cfg: Any, split: str) -> str:
    return {"val": data_cfg.val_split, "train": data_cfg.train_split}.get(split, split)


class _EvalImages(Dataset):
    """Decodes, resizes and cuts the views of this rank's images; runs in the loader's workers."""

    def __init__(
        self, paths: Sequence[str], data_cfg: Any, protocol: Protocol, scales: Sequence[int], size: int
    ) -> None:
        self.paths, self.data_cfg, self.protocol = paths, data_cfg, protocol
        self.scales, self.size = scales, size
        self.draft_size = max(scales) if getattr(data_cfg, "use_draft", False) else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, list[torch.Tensor]]:
        image = decode_image(self.paths[index], draft_size=self.draft_size)
        views = []
        for scale in self.scales:
            resized = to_model_input(resize_shorter(image, scale), self.data_cfg)
            views.extend(view.contiguous() for view in image_views(resized, self.protocol, self.size))
        return index, views


def _one_thread_per_worker(_: int) -> None:
    torch.set_num_threads(1)


class _BucketedRunner:
    """Accumulates per-image probability sums from jobs batched by input shape."""

    def __init__(self, model: SPPNet, num_images: int, cfg: EvalConfig, device: torch.device) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.sums = np.zeros((num_images, model.num_classes), dtype=np.float64)
        self.jobs = np.zeros(num_images, dtype=np.int64)
        self.buckets: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        self.pending = 0

    def add(self, index: int, views: list[torch.Tensor]) -> None:
        for view in views:
            bucket = self.buckets.setdefault(tuple(view.shape), [])
            bucket.append((index, view))
            self.pending += 1
            if len(bucket) >= self.cfg.batch_size:
                self._flush(tuple(view.shape))
        if self.pending > self.cfg.max_pending_views:  # bound memory when many shapes are half full
            self._flush(max(self.buckets, key=lambda shape: len(self.buckets[shape])))

    def finish(self) -> np.ndarray:
        for shape in list(self.buckets):
            self._flush(shape)
        if (self.jobs == 0).any():
            raise RuntimeError(f"{int((self.jobs == 0).sum())} images got no prediction")
        return self.sums / self.jobs[:, None]

    def _flush(self, shape: tuple[int, ...]) -> None:
        jobs = self.buckets.pop(shape)
        self.pending -= len(jobs)
        batch = torch.stack([view for _, view in jobs]).to(self.device)
        probs = job_probabilities(self.model, batch, self.cfg.flips, self.cfg.amp).cpu().double().numpy()
        indices = np.array([index for index, _ in jobs])
        np.add.at(self.sums, indices, probs)
        np.add.at(self.jobs, indices, 1)


@torch.inference_mode()
def job_probabilities(model: SPPNet, batch: torch.Tensor, flips: bool, amp: bool = False) -> torch.Tensor:
    """(N, classes) softmax averaged over every window of each input's last map, and over its mirror image."""
    size = len(batch)
    if flips:
        batch = torch.cat([batch, batch.flip(-1)])
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and batch.device.type == "cuda"
        else contextlib.nullcontext()
    )
    with autocast:
        logits = model.forward_dense(batch)  # (N, H', W', classes); one window for a training-sized crop
    probs = F.softmax(logits.float(), dim=-1).mean(dim=(1, 2))
    return (probs[:size] + probs[size:]) / 2 if flips else probs


def _gather_to_rank0(
    indices: np.ndarray, probs: np.ndarray, rank: int, world_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact gather: per-rank counts travel first and the transport padding is cut off on rank 0."""
    comm = device if dist.get_backend() == "nccl" else _CPU
    count = torch.tensor([len(indices)], device=comm)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    most = int(max(c.item() for c in counts))
    padded_idx = torch.full((most,), -1, dtype=torch.int64, device=comm)
    padded_idx[: len(indices)] = torch.from_numpy(indices)
    padded_probs = torch.zeros((most, probs.shape[1]), dtype=torch.float32, device=comm)
    padded_probs[: len(indices)] = torch.from_numpy(probs)
    idx_list = [torch.empty_like(padded_idx) for _ in range(world_size)] if rank == 0 else None
    prob_list = [torch.empty_like(padded_probs) for _ in range(world_size)] if rank == 0 else None
    dist.gather(padded_idx, idx_list, dst=0)
    dist.gather(padded_probs, prob_list, dst=0)
    if rank != 0:
        return None
    sizes = [int(c.item()) for c in counts]
    all_idx = np.concatenate([t[:n].cpu().numpy() for t, n in zip(idx_list, sizes, strict=True)])
    all_probs = np.concatenate([t[:n].cpu().numpy() for t, n in zip(prob_list, sizes, strict=True)])
    return all_idx, all_probs


def _raise_together(error: Exception | None, world_size: int, device: torch.device) -> None:
    """A collective every rank reaches: all raise together instead of leaving the others in a gather."""
    if world_size == 1:
        if error is not None:
            raise error
        return
    comm = device if dist.get_backend() == "nccl" else _CPU
    failed = torch.tensor([0 if error is None else 1], device=comm)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if failed.item():
        raise RuntimeError("evaluation failed on another rank; its error is in that rank's log")


def _broadcast_errors(errors: list[float], device: torch.device) -> list[float]:
    comm = device if dist.get_backend() == "nccl" else _CPU
    values = torch.tensor(errors, dtype=torch.float64, device=comm)
    dist.broadcast(values, src=0)
    return values.cpu().tolist()


def _bare_model(model: nn.Module) -> SPPNet:
    """The SPPNet inside a DDP or torch.compile wrapper: the dense test needs its forward_dense."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and not hasattr(model, "forward_dense"):
            model = getattr(model, attr)
    if not hasattr(model, "forward_dense"):
        raise TypeError(f"evaluate needs an SPPNet (with forward_dense), got {type(model).__name__}")
    return model  # type: ignore[return-value]


def _batches(dataset: _EvalImages, workers: int) -> Iterator[tuple[int, list[torch.Tensor]]]:
    if workers == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    yield from DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_one_thread_per_worker,
        prefetch_factor=4,
    )


def evaluate(
    model: nn.Module,
    data_cfg: Any,
    eval_cfg: EvalConfig,
    split: str = "val",
    rank: int = 0,
    world_size: int = 1,
    device: torch.device = _CPU,
    extra_metadata: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Top-1/top-5 error (percent) of `model` on a split with eval_cfg's protocol; call it on every rank."""
    net = _bare_model(model)
    protocol = Protocol(eval_cfg.protocol)
    scales = effective_scales(list(eval_cfg.scales), net.input_size)
    folder = _split_folder(data_cfg, split)
    if getattr(data_cfg.name, "value", data_cfg.name) == "shards":
        raise ValueError("evaluation reads the folder layout: point data=folder (or imagenet) at the images")
    root = resolve_root(data_cfg)
    samples, classes = list_samples(root, folder)
    if eval_cfg.limit is not None:
        samples = samples[: eval_cfg.limit]
    if not samples:
        raise ValueError(f"no images in {root / folder}")
    if len(classes) != net.num_classes:
        raise ValueError(f"the model predicts {net.num_classes} classes, {root / folder} has {len(classes)}")

    local = np.arange(rank, len(samples), world_size)
    dataset = _EvalImages([str(samples[i][0]) for i in local], data_cfg, protocol, scales, net.input_size)
    workers = eval_cfg.num_workers if eval_cfg.num_workers is not None else data_cfg.num_workers
    was_training = net.training
    net.eval()
    local_error: Exception | None = None
    local_probs = np.zeros((0, net.num_classes), np.float32)
    try:
        if len(local):
            runner = _BucketedRunner(net, len(local), eval_cfg, device)
            for index, views in _batches(dataset, workers):
                runner.add(index, views)
            local_probs = runner.finish().astype(np.float32)
    except Exception as exc:  # e.g. an unreadable image: every rank must learn of it, or the others hang
        local_error = exc
    finally:
        net.train(was_training)
    _raise_together(local_error, world_size, device)

    if world_size > 1:
        gathered = _gather_to_rank0(local, local_probs, rank, world_size, device)
    else:
        gathered = local, local_probs
    gather_error = None
    if gathered is not None and not np.array_equal(np.sort(gathered[0]), np.arange(len(samples))):
        gather_error = RuntimeError(
            f"gathered {len(gathered[0])} predictions for {len(samples)} images: some were lost or counted twice"
        )
    _raise_together(gather_error, world_size, device)
    errors = [float("nan"), float("nan")]
    result = EvalResult(float("nan"), float("nan"), len(samples))
    if gathered is not None:
        indices, probs = gathered
        order = np.argsort(indices)
        probs = probs[order]
        labels = np.array([samples[i][1] for i in range(len(samples))], dtype=np.int64)
        by_k = topk_errors(probs, labels)
        errors = [by_k[1], by_k[5]]
        result.ids = [Path(samples[i][0]).relative_to(root / folder).as_posix() for i in range(len(samples))]
        result.labels, result.probs = labels, probs
    if world_size > 1:
        errors = _broadcast_errors(errors, device)
    result.top1_error, result.top5_error = errors
    result.metadata = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": getattr(net, "model_name", type(net).__name__),
            "input_size": net.input_size,
            "map_size": net.map_size,
            "num_classes": net.num_classes,
        },
        "protocol": protocol.value,
        "scales": list(eval_cfg.scales),
        "scales_px": scales,
        "flips": bool(eval_cfg.flips),
        "views_per_image": len(scales) * CROPS_PER_SCALE[protocol] * (2 if eval_cfg.flips else 1),
        "probs_dtype": getattr(eval_cfg.probs_dtype, "value", eval_cfg.probs_dtype),
        "dataset": {
            "name": getattr(data_cfg.name, "value", data_cfg.name),
            "root": os.fspath(root),
            "split": folder,
            "limit": eval_cfg.limit,
        },
        "classes": list(classes),
        "class_names": class_names(data_cfg, root, list(classes)),
        "num_images": len(samples),
        "top1_error": result.top1_error,
        "top5_error": result.top5_error,
        **dict(extra_metadata or {}),
    }
    return result
