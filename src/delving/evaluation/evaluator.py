"""Evaluate a model on one split of any data set (folders or shards) with one of the paper's test protocols.

Every image becomes one job per (scale, view); a job's probability is the softmax averaged over the
windows of its last feature map (one window for a crop) and over its flip. An image's probability is
the mean over its jobs, so each scale (and each of the ten views) weighs the same whatever its window
count. Jobs of equal shape share a batch (shape buckets), so images of different sizes never need
padding and are not run one by one. Ranks take images rank, rank + world_size, ...: each image once.

`evaluate` is five steps: `_open_split` (the data room's reader, so `data=shards` works like folders),
`_predict_local` (this rank's images; an unreadable one is dropped, logged and counted by the data room's
`BadFileCounter`, and too many stop the run), `_gather_exact` (rank 0 gets every scored image once),
`_score` (errors over the images scored) and `_metadata` (what the predictions file records).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from delving.data.config import DataConfig, DatasetKind
from delving.data.datasets import ClassListError, check_class_lists, class_names, resolve_root
from delving.data.decode import BadImageError, decode_image
from delving.data.loaders import BadFileCounter, Failure, init_worker_process, usable_workers
from delving.data.normalize import InputNormalizer
from delving.data.readers import SampleReader, open_split
from delving.data.same_data import check_ranks_see_the_same_data
from delving.data.transforms import pil_to_uint8, resize_shorter
from delving.dist import (
    DistributedContext,
    broadcast_from_main,
    fail_together,
    failing_together,
    gather_objects,
    gather_rows_to_main,
)
from delving.errors import UserError
from delving.evaluation.config import EvalConfig, ProbsDtype, Protocol, effective_scales
from delving.evaluation.metrics import topk_errors
from delving.evaluation.predictions import Predictions
from delving.evaluation.views import CROPS_PER_SCALE, image_views
from delving.models import SPPNet
from delving.numerics import cudnn_autotuning, fp32_math, tf32
from delving.progress import Progress
from delving.worker_pool import ctrl_c_held

SINGLE_PROCESS = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class EvalInputError(UserError, ValueError):
    """A split that cannot be evaluated: empty, or every image unreadable."""


@dataclass
class EvalResult:
    """Errors in percent over the `num_images` images scored (`skipped_images` unreadable ones were dropped).

    ids, labels and probs (float32, in data set order, scored images only) are set on rank 0 only.
    """

    top1_error: float
    top5_error: float
    num_images: int
    skipped_images: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    ids: list[str] | None = None
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None

    def predictions(self) -> Predictions:
        if self.ids is None or self.labels is None or self.probs is None:
            raise RuntimeError("only rank 0 holds the gathered predictions")
        dtype = np.float16 if self.metadata.get("probs_dtype") == "float16" else np.float32
        return Predictions(np.asarray(self.ids), self.labels, self.probs.astype(dtype), dict(self.metadata))


@dataclass
class _Split:
    """The images one evaluation scores: the first `size` samples of a split, and where they come from."""

    reader: SampleReader
    classes: list[str]
    root: Path
    name: str  # the split's folder (or shard index) name
    size: int


@dataclass
class _Scored:
    """Images by their position in the split: those scored with their probabilities, and those dropped."""

    indices: np.ndarray
    probs: np.ndarray
    skipped: np.ndarray


class _EvalImages(Dataset):
    """Decodes, resizes and cuts the views of this rank's images; runs in the loader's workers."""

    def __init__(
        self,
        reader: SampleReader,
        positions: np.ndarray,
        data_cfg: DataConfig,
        protocol: Protocol,
        scales: Sequence[int],
        size: int,
        draft: bool,
    ) -> None:
        self.reader, self.positions, self.data_cfg = reader, positions, data_cfg
        self.protocol, self.scales, self.size = protocol, scales, size
        self.draft_size = max(scales) if draft else None  # eval.draft, not the training's data.use_draft
        # Built once (a mean image is read here, not per view). The mean is fitted to the whole resized image
        # before the views are cut, so a mean image stays aligned with each view's place in the image.
        self.normalizer = InputNormalizer.from_config(data_cfg)
        self.exif = data_cfg.exif_transpose  # the training's data.exif_transpose

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> tuple[int, list[torch.Tensor] | None, Failure | None]:
        try:
            image = decode_image(self.reader.source(int(self.positions[k])), self.draft_size, self.exif)
        except BadImageError as err:  # dropped and counted in the main process, like validation's
            return k, None, (err.path, err.reason)
        views = []
        for scale in self.scales:
            resized = self.normalizer(pil_to_uint8(resize_shorter(image, scale)))
            views.extend(view.contiguous() for view in image_views(resized, self.protocol, self.size))
        return k, views, None


class _BucketedRunner:
    """Accumulates per-image probability sums from jobs batched by input shape.

    `on_done(n)` is told when n more images have had every one of their jobs run (for progress: an image
    whose views wait in half-full buckets is not done yet).
    """

    def __init__(
        self,
        model: SPPNet,
        num_images: int,
        cfg: EvalConfig,
        device: torch.device,
        on_done: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.model, self.cfg, self.device, self.on_done = model, cfg, device, on_done
        self.sums = np.zeros((num_images, model.num_classes), dtype=np.float64)
        self.jobs = np.zeros(num_images, dtype=np.int64)
        self.waiting = np.zeros(num_images, dtype=np.int64)  # views of each image not run yet
        self.buckets: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        self.pending = 0

    def add(self, index: int, views: list[torch.Tensor]) -> None:
        self.waiting[index] += len(views)
        for view in views:
            bucket = self.buckets.setdefault(tuple(view.shape), [])
            bucket.append((index, view))
            self.pending += 1
            if len(bucket) >= self.cfg.batch_size:
                self._flush(tuple(view.shape))
        if self.pending > self.cfg.max_pending_views:  # bound memory when many shapes are half full
            self._flush(max(self.buckets, key=lambda shape: len(self.buckets[shape])))

    def finish(self, skipped: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(rows that got a prediction, their mean probabilities); the others must be exactly `skipped`."""
        for shape in list(self.buckets):
            self._flush(shape)
        scored = np.flatnonzero(self.jobs > 0)
        missing = sorted(set(np.flatnonzero(self.jobs == 0).tolist()) - set(skipped))
        if missing:
            raise RuntimeError(f"{len(missing)} images got no prediction")
        return scored, self.sums[scored] / self.jobs[scored, None]

    def _flush(self, shape: tuple[int, ...]) -> None:
        jobs = self.buckets.pop(shape)
        self.pending -= len(jobs)
        batch = torch.stack([view for _, view in jobs]).to(self.device)
        probs = job_probabilities(self.model, batch, self.cfg.flips, self.cfg.amp).cpu().double().numpy()
        indices = np.array([index for index, _ in jobs])
        np.add.at(self.sums, indices, probs)
        np.add.at(self.jobs, indices, 1)
        np.subtract.at(self.waiting, indices, 1)
        touched = np.unique(indices)
        self.on_done(int((self.waiting[touched] == 0).sum()))


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


def _bare_model(model: nn.Module) -> SPPNet:
    """The SPPNet inside a DDP or torch.compile wrapper: the dense test needs its forward_dense."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and not hasattr(model, "forward_dense"):
            model = getattr(model, attr)
    if not hasattr(model, "forward_dense"):
        raise TypeError(f"evaluate needs an SPPNet (with forward_dense), got {type(model).__name__}")
    return model  # type: ignore[return-value]


def _items(
    dataset: _EvalImages, workers: int
) -> Iterator[tuple[int, list[torch.Tensor] | None, Failure | None]]:
    """The dataset's items, decoded in `workers` processes (at most one per core); closing the generator ends
    them at once."""
    workers = usable_workers(workers)
    if workers == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=functools.partial(init_worker_process, owner_pid=os.getpid()),
        prefetch_factor=4,
    )
    with ctrl_c_held():  # the workers fork here
        iterator = iter(loader)
    try:
        yield from iterator
    finally:
        # An error may keep the iterator alive in its traceback: end the workers now, not when it is freed.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _open_split(data_cfg: DataConfig, split: str, limit: int | None) -> _Split:
    """`split` is val, train (the data config's split names) or any split name of the data set."""
    name = {"val": data_cfg.val_split, "train": data_cfg.train_split}.get(split, split)
    reader, classes = open_split(data_cfg, name)
    root = resolve_root(data_cfg)
    size = len(reader) if limit is None else min(limit, len(reader))
    if size == 0:
        raise EvalInputError(f"no images to evaluate in split {name!r} of {root}")
    return _Split(reader, list(classes), root, name, size)


def _check_classes(split: _Split, net: SPPNet, classes: Sequence[str] | None) -> None:
    """The data set must index the classes the model was trained on, in the same order."""
    where = f"the data set ({split.root}, split {split.name!r})"
    if classes is not None:
        check_class_lists(
            list(classes), split.classes, "the checkpoint (the classes it was trained on)", where
        )
    if len(split.classes) != net.num_classes:
        raise ClassListError(
            f"the model predicts {net.num_classes} classes, {where} has {len(split.classes)}"
        )


def _predict_local(
    net: SPPNet,
    split: _Split,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    ctx: DistributedContext,
    show_progress: bool,
) -> _Scored:
    """This rank's images (rank, rank + world_size, ...): probabilities of the readable ones, and the rest."""
    protocol = Protocol(eval_cfg.protocol)
    scales = effective_scales(list(eval_cfg.scales), net.input_size)
    positions = np.arange(ctx.rank, split.size, ctx.world_size)
    dataset = _EvalImages(split.reader, positions, data_cfg, protocol, scales, net.input_size, eval_cfg.draft)
    workers = eval_cfg.num_workers if eval_cfg.num_workers is not None else data_cfg.num_workers
    bad_files = BadFileCounter(data_cfg.max_bad_fraction, len(positions))
    skipped: list[int] = []
    what = f"eval {protocol.value}" + (f" (rank 0's share of {ctx.world_size})" if ctx.is_distributed else "")
    with (
        Progress(len(positions), what, enabled=show_progress and ctx.is_main) as progress,
        contextlib.closing(_items(dataset, workers)) as items,
    ):
        runner = _BucketedRunner(net, len(positions), eval_cfg, _device_of(net), progress.update)
        for k, views, failure in items:
            if failure is None:
                runner.add(k, views)  # type: ignore[arg-type]
            else:
                skipped.append(k)
                progress.update()
            bad_files.update(int(failure is None), [] if failure is None else [failure])
        scored, probs = runner.finish(skipped)
    return _Scored(positions[scored], probs.astype(np.float32), positions[skipped])


def _device_of(net: nn.Module) -> torch.device:
    """Where the model's weights are: its batches go there (a GPU model passed without a context included)."""
    return next(net.parameters(), torch.empty(0)).device


def _float32_math(device: torch.device) -> dict[str, str]:
    """The device and how its float32 convolutions and matmuls ran (tf32 or ieee; a CPU's are ieee)."""
    math = fp32_math() if device.type == "cuda" else {"conv": "ieee", "matmul": "ieee"}
    return {"device": str(device), **math}


def _gather_exact(
    local: _Scored | None, size: int, ctx: DistributedContext
) -> tuple[_Scored | None, np.ndarray]:
    """(every scored image on rank 0 in split order, None elsewhere; the dropped images, on every rank).

    Rank 0 checks that the scored and the dropped images together are the split's, each exactly once.
    """
    assert local is not None  # failing_together let every rank past only when all had predictions
    gathered = gather_rows_to_main(ctx, torch.from_numpy(local.indices), torch.from_numpy(local.probs))
    skipped = np.sort(
        np.concatenate([np.asarray(s, dtype=np.int64) for s in gather_objects(ctx, local.skipped)])
    )
    error, result = None, None
    if gathered is not None:
        indices, probs = gathered[0].numpy(), gathered[1].numpy()
        if not np.array_equal(np.sort(np.concatenate([indices, skipped])), np.arange(size)):
            error = RuntimeError(
                f"gathered {len(indices)} predictions and {len(skipped)} dropped images for {size} images: "
                "some were lost or counted twice"
            )
        order = np.argsort(indices)
        result = _Scored(indices[order], probs[order], skipped)
    fail_together(ctx, error)
    return result, skipped


def _score(scored: _Scored, split: _Split) -> tuple[np.ndarray, float, float]:
    """(labels, top-1 error, top-5 error) over the images scored."""
    if not len(scored.indices):
        raise EvalInputError(f"no readable image in split {split.name!r} of {split.root}")
    labels = np.array([split.reader.label(int(i)) for i in scored.indices], dtype=np.int64)
    errors = topk_errors(scored.probs, labels)
    return labels, errors[1], errors[5]


def _metadata(
    net: SPPNet,
    split: _Split,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    result: EvalResult,
    skipped_ids: list[str],
) -> dict[str, Any]:
    protocol = Protocol(eval_cfg.protocol)
    scales = effective_scales(list(eval_cfg.scales), net.input_size)
    return {
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
        "draft": bool(eval_cfg.draft),
        "views_per_image": len(scales) * CROPS_PER_SCALE[protocol] * (2 if eval_cfg.flips else 1),
        "probs_dtype": ProbsDtype(eval_cfg.probs_dtype).value,
        "float32_math": _float32_math(_device_of(net)),
        "dataset": {
            "name": DatasetKind(data_cfg.name).value,
            "root": os.fspath(split.root),
            "split": split.name,
            "limit": eval_cfg.limit,
        },
        "classes": split.classes,
        "class_names": class_names(
            data_cfg, split.root, split.classes, getattr(split.reader, "class_names", None)
        ),
        "num_images": result.num_images,
        "skipped_images": result.skipped_images,
        "skipped_ids": skipped_ids,
        "top1_error": result.top1_error,
        "top5_error": result.top5_error,
    }


def evaluate(
    model: nn.Module,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    split: str = "val",
    ctx: DistributedContext = SINGLE_PROCESS,
    *,
    classes: Sequence[str] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> EvalResult:
    """Top-1/top-5 error (percent) of `model` on a split with eval_cfg's protocol; every rank calls it.

    `classes`: the class list the model was trained on (a checkpoint's); a data set with another list is
    refused, naming the first difference. Progress goes to stderr (or the "delving" logger) on rank 0.

    The batches go to the model's device. There, float32 math runs as eval.tf32 says, and cuDNN's autotuning
    is off: the dense and multi-scale protocols batch whole images by shape, so nearly every batch has a new
    shape that `cudnn.benchmark` would time every algorithm for, once each (the training turns it on).
    """
    with tf32(eval_cfg.tf32), cudnn_autotuning(False):
        return _evaluate(model, data_cfg, eval_cfg, split, ctx, classes, extra_metadata, show_progress)


def _evaluate(
    model: nn.Module,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    split: str,
    ctx: DistributedContext,
    classes: Sequence[str] | None,
    extra_metadata: Mapping[str, Any] | None,
    show_progress: bool,
) -> EvalResult:
    net = _bare_model(model)
    was_training = net.training
    net.eval()
    split_, local = None, None
    try:
        with failing_together(ctx):  # up to the first collective: a failure on any rank stops them all
            split_ = _open_split(data_cfg, split, eval_cfg.limit)
            _check_classes(split_, net, classes)
        assert split_ is not None
        # Rank 0 names every gathered prediction with its own listing: the ranks' listings must be one.
        check_ranks_see_the_same_data(ctx, {split_.name: (split_.reader, split_.classes)})
        with failing_together(ctx):
            local = _predict_local(net, split_, data_cfg, eval_cfg, ctx, show_progress)
    finally:
        net.train(was_training)
    assert split_ is not None
    gathered, skipped = _gather_exact(local, split_.size, ctx)
    result = EvalResult(float("nan"), float("nan"), split_.size - len(skipped), len(skipped))
    errors = [float("nan"), float("nan")]
    score_error = None
    if gathered is not None:
        try:
            result.labels, top1, top5 = _score(gathered, split_)
            errors = [top1, top5]
        except EvalInputError as exc:
            score_error = exc
        result.ids = [split_.reader.sample_id(int(i)) for i in gathered.indices]
        result.probs = gathered.probs
    fail_together(ctx, score_error)
    result.top1_error, result.top5_error = broadcast_from_main(ctx, errors)
    skipped_ids = [split_.reader.sample_id(int(i)) for i in skipped]
    result.metadata = {
        **_metadata(net, split_, data_cfg, eval_cfg, result, skipped_ids),
        **dict(extra_metadata or {}),
    }
    return result
