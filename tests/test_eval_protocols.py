"""The test protocols on tiny nets and generated images: the dense equalities, view positions and counts,
flips, per-scale weighting, shape buckets, checkpoints and the delving-eval app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from helpers.configs import compose_config
from helpers.evaluation import (
    TINY_MODEL,
    calibrate_logits,
    folder_data_config,
    save_checkpoint,
    tiny_model,
    write_image_folder,
)
from PIL import Image

from delving.checkpoint import file_sha256
from delving.data.transforms import resize_shorter, to_model_input
from delving.evaluation import CheckpointError, EvalConfig, Protocol, evaluate, load_model
from delving.evaluation.app import run_eval
from delving.evaluation.config import effective_scales
from delving.evaluation.evaluator import job_probabilities
from delving.evaluation.views import crop_corners
from delving.models import create_net
from delving.models.specs import Conv, Pool
from delving.models.sppnet import SPPNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# (width, height): two share a resized shape at every scale, one is square, one is portrait.
SIZES = [(80, 64), (160, 128), (64, 64), (64, 96), (100, 70)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), SIZES)


def _probe(seed: int, size: tuple[int, int]) -> torch.Tensor:
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed)) * 255 - 120


def test_scales_follow_the_training_crop() -> None:
    assert effective_scales([256, 384, 480], 224) == [256, 384, 480]
    assert effective_scales([256, 384, 480], 64) == [73, 110, 137]
    assert effective_scales([224], 64) == [64]
    with pytest.raises(ValueError, match=r"\[200\] are smaller than the paper's crop"):
        effective_scales([256, 200], 64)


def test_crop_positions_are_alexnets() -> None:
    assert crop_corners(Protocol.ten_view, 70, 91, 64) == [(3, 14), (0, 0), (0, 27), (6, 0), (6, 27)]
    assert crop_corners(Protocol.center, 64, 64, 64) == [(0, 0)]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("model_a", {"width": 1 / 16, "input_size": 64, "spp_levels": [2, 1]}),  # map 4
        ("net14", {"width": 1 / 16, "input_size": 56, "spp_levels": [3, 2, 1]}),  # map 4
        ("model_a", {"width": 1 / 32, "input_size": 224, "act": "relu"}),  # the paper's 14x14 map, {7,3,2,1}
    ],
)
def test_whole_image_window_equals_a_plain_forward(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = calibrate_logits(create_net(name, num_classes=5, **options).eval(), options["input_size"])
    x = _probe(1, (options["input_size"], options["input_size"]))
    logits = model.forward_dense(x)
    assert logits.shape == (1, 1, 1, 5)  # a training-sized image has exactly one window
    with torch.no_grad():
        expected = F.softmax(model(x), dim=1)
    probs = job_probabilities(model, x, flips=False)
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0)
    assert expected.max() - expected.min() > 0.1  # the softmax is not flat: the check can fail
    torch.testing.assert_close(probs.sum(1), torch.ones(1))


def _padding_free_net() -> SPPNet:
    # No padding anywhere, feature stride 8: the map of a crop at an offset that is a multiple of 8 is
    # exactly a sub-map of the whole image's map, so every window must equal its crop's forward.
    plan = [[Conv(3, 8, stride=2), Pool(2, 2)], [Conv(3, 16), Pool(2, 2)], [Conv(3, 16)]]
    torch.manual_seed(0)
    return calibrate_logits(SPPNet(plan, [2, 1], num_classes=4, fc_width=32, input_size=64).eval(), 64)


def test_every_window_equals_the_forward_of_its_aligned_crop() -> None:
    model = _padding_free_net()
    assert (model.map_size, model.feature_stride) == (4, 8)
    x = _probe(2, (64, 104))  # 6 windows along the width: crops at 0, 8, ..., 40 (40 + 64 = 104)
    logits = model.forward_dense(x)
    assert logits.shape == (1, 1, 6, 4)
    with torch.no_grad():
        crops = torch.cat([model(x[..., 8 * j : 8 * j + 64]) for j in range(6)])
        flipped = torch.cat([model(x.flip(-1)[..., 8 * j : 8 * j + 64]) for j in range(6)])
        misaligned = model(x[..., 4:68])
    torch.testing.assert_close(logits[0, 0], crops, atol=1e-4, rtol=0)
    assert (logits[0, 0, 0] - misaligned[0]).abs().max() > 1e-2  # off the stride grid they differ
    # The dense job averages the softmax over the 6 windows of the image and the 6 of its mirror image.
    expected = torch.cat([F.softmax(crops, 1), F.softmax(flipped, 1)]).mean(0, keepdim=True)
    torch.testing.assert_close(job_probabilities(model, x, flips=True), expected, atol=1e-5, rtol=0)


def _receptive_fields(features: torch.nn.Sequential, size: int) -> list[tuple[int, int]]:
    """Input interval [first, last] each cell of the last map reads, padding cells included (may be < 0)."""
    jump, start, extent = 1, 0, 1
    cells = size
    for layer in features:
        if not isinstance(layer, torch.nn.Conv2d | torch.nn.MaxPool2d):
            continue
        kernel, stride, pad = (
            int(np.atleast_1d(v)[0]) for v in (layer.kernel_size, layer.stride, layer.padding)
        )
        start -= pad * jump
        extent += (kernel - 1) * jump
        jump *= stride
        cells = (cells + 2 * pad - kernel) // stride + 1
    return [(start + i * jump, start + i * jump + extent - 1) for i in range(cells)]


def test_feature_cells_agree_with_a_crop_where_padding_does_not_reach() -> None:
    # A padded net with a small receptive field (18 px), so a 64 crop has cells that never see padding.
    plan = [[Conv(3, 8, padding=1), Pool(2, 2)], [Conv(3, 8, padding=1), Pool(2, 2)], [Conv(3, 8, padding=1)]]
    torch.manual_seed(0)
    model = SPPNet(plan, [2, 1], num_classes=4, fc_width=16, input_size=64).eval()
    assert model.feature_stride == 4
    clean = [
        i for i, (first, last) in enumerate(_receptive_fields(model.features, 64)) if first >= 0 and last < 64
    ]
    assert clean == list(range(2, 14))  # cells 0-1 and 14-15 read the crop's zero padding
    image = _probe(3, (96, 96))
    offset = 8  # on the stride grid: crop cell i is image cell i + 2, whose field stays inside the image
    with torch.no_grad():
        whole = model.forward_features(image)[..., 2:18, 2:18]
        crop = model.forward_features(image[..., offset : offset + 64, offset : offset + 64])
    inner = slice(clean[0], clean[-1] + 1)
    # Activations of a few hundred on raw-pixel inputs: fp32 summation order allows a 1e-6 relative gap.
    torch.testing.assert_close(crop[..., inner, inner], whole[..., inner, inner], atol=1e-4, rtol=1e-5)
    assert (crop[..., 0, :] - whole[..., 0, :]).abs().max() > 1e-2  # where padding reaches, they differ


def _evaluate(model: torch.nn.Module, root: Path, **options) -> np.ndarray:
    result = evaluate(model, folder_data_config(root), EvalConfig(**options))
    assert result.num_images == len(result.ids)
    np.testing.assert_allclose(result.probs.sum(1), 1.0, atol=1e-5)
    return result.probs


def _model_input(path: Path, shorter: int) -> torch.Tensor:
    return to_model_input(resize_shorter(Image.open(path).convert("RGB"), shorter), folder_data_config(path))


def test_ten_view_is_torchvisions_ten_crop_averaged(data_root: Path) -> None:
    model = tiny_model()
    probs = _evaluate(model, data_root, protocol="ten_view", scales=[256])
    path = sorted((data_root / "val").rglob("*.JPEG"))[0]  # the first image in data set order
    image = _model_input(path, 73)
    crops = torch.stack([*TF.five_crop(image, 64), *(TF.hflip(c) for c in TF.five_crop(image, 64))])
    with torch.no_grad():
        expected = F.softmax(model(crops), 1).mean(0)
    np.testing.assert_allclose(probs[0], expected.numpy(), atol=1e-5)
    center = _evaluate(model, data_root, protocol="center", scales=[256], flips=False)
    with torch.no_grad():
        expected_center = F.softmax(model(TF.center_crop(image, 64)[None]), 1)[0]
    np.testing.assert_allclose(center[0], expected_center.numpy(), atol=1e-5)
    assert np.abs(center[0] - probs[0]).max() > 1e-3  # the views differ, so the protocols do


def test_multiscale_weighs_each_scale_equally(data_root: Path) -> None:
    model = tiny_model()
    multi = _evaluate(model, data_root, protocol="multiscale", scales=[256, 384])
    singles = [_evaluate(model, data_root, protocol="dense", scales=[s]) for s in (256, 384)]
    np.testing.assert_allclose(multi, (singles[0] + singles[1]) / 2, atol=1e-6)
    # The 384 scale has more windows than 256; a window-weighted mean would not equal the above.
    image = _model_input(sorted((data_root / "val").rglob("*.JPEG"))[0], 110)
    with torch.no_grad():
        windows = model.forward_dense(image[None]).shape[1:3]
    assert windows.numel() > 1


def test_whole_image_dense_equals_center_at_the_training_size(tmp_path: Path) -> None:
    # Square images at scale 224 (= the model's 64): the whole image is the centre crop and one window.
    root = write_image_folder(tmp_path, [(64, 64), (96, 96), (80, 80)])
    model = tiny_model()
    dense = _evaluate(model, root, protocol="dense", scales=[224], flips=False)
    center = _evaluate(model, root, protocol="center", scales=[224], flips=False)
    np.testing.assert_allclose(dense, center, atol=1e-5)


@pytest.mark.slow
def test_flips_average_the_mirror_images(tmp_path: Path) -> None:
    # PNG, and widths whose centre crop is symmetric, so the mirrored files give exactly the flipped views.
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate([(90, 70), (64, 100), (120, 64)]):
        pixels = np.array(
            Image.fromarray(rng.integers(0, 255, (h // 6, w // 6, 3), dtype=np.uint8)).resize((w, h))
        )
        for folder, image in (("plain", pixels), ("mirror", np.ascontiguousarray(pixels[:, ::-1]))):
            out = tmp_path / folder / "val" / f"c{i}"
            out.mkdir(parents=True)
            Image.fromarray(image).save(out / "x.png")
    model = tiny_model()
    for protocol, scales in (("ten_view", [224]), ("dense", [256]), ("multiscale", [256, 384])):
        both = _evaluate(model, tmp_path / "plain", protocol=protocol, scales=scales, flips=True)
        plain = _evaluate(model, tmp_path / "plain", protocol=protocol, scales=scales, flips=False)
        mirror = _evaluate(model, tmp_path / "mirror", protocol=protocol, scales=scales, flips=False)
        np.testing.assert_allclose(both, (plain + mirror) / 2, atol=1e-4, err_msg=protocol)
        assert np.abs(plain - mirror).max() > 1e-3  # the flip changes the prediction


class _CountingFeatures(torch.nn.Module):
    def __init__(self, features: torch.nn.Module) -> None:
        super().__init__()
        self.features, self.shapes = features, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.features(x)


@pytest.mark.parametrize(
    ("protocol", "scales", "flips", "views"),
    [
        ("center", [256], False, 1),
        ("ten_view", [256], True, 10),
        ("ten_view", [256, 384], False, 10),
        ("dense", [256], True, 2),
        ("multiscale", [256, 384, 480], True, 6),
    ],
)
def test_view_counts_and_shape_buckets(
    data_root: Path, protocol: str, scales: list, flips: bool, views: int
) -> None:
    model = tiny_model()
    counter = _CountingFeatures(model.features)
    model.features = counter
    result = evaluate(
        model, folder_data_config(data_root), EvalConfig(protocol=protocol, scales=scales, flips=flips)
    )
    assert sum(shape[0] for shape in counter.shapes) == views * len(SIZES)
    assert result.metadata["views_per_image"] == views
    if protocol in ("dense", "multiscale"):
        # One forward per distinct resized shape: 80x64 and 160x128 share theirs at every scale.
        per_image = 2 if flips else 1
        assert sorted(shape[0] for shape in counter.shapes) == sorted(
            [per_image, per_image, per_image, 2 * per_image] * len(scales)
        )
    else:
        assert all(shape[-2:] == (64, 64) for shape in counter.shapes)


def test_a_class_count_mismatch_is_refused(data_root: Path) -> None:
    with pytest.raises(ValueError, match="predicts 5 classes"):
        evaluate(tiny_model(num_classes=5), folder_data_config(data_root), EvalConfig(protocol="center"))


def test_load_model_and_its_errors(tmp_path: Path, data_root: Path) -> None:
    model = tiny_model()
    data_cfg = {"name": "folder", "root": str(data_root), "crop_size": 64, "num_workers": 0}
    path = save_checkpoint(tmp_path / "ok.pt", model, dict(TINY_MODEL), data_cfg)
    loaded, checkpoint, sha = load_model(path)
    config = checkpoint.config
    assert sha == file_sha256(path) and len(sha) == 64 and config["data"] == data_cfg
    assert not loaded.training
    x = _probe(4, (64, 64))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or not a torch checkpoint"):
        load_model(tmp_path / "corrupt.pt")
    torch.save({"state": 1}, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match="needs 'model' and 'config' entries"):
        load_model(tmp_path / "keys.pt")
    save_checkpoint(tmp_path / "wide.pt", model, {**TINY_MODEL, "width": 1 / 8}, data_cfg)
    with pytest.raises(CheckpointError, match="weights do not match the model its config describes"):
        load_model(tmp_path / "wide.pt")


@pytest.mark.parametrize("protocol", ["center", "ten_view", "dense", "multiscale"])
def test_every_protocol_config_composes(protocol: str) -> None:
    cfg = compose_config(["checkpoint=x.pt", f"eval={protocol}"], config_name="evaluate")
    assert cfg.eval.protocol == protocol and cfg.data is None
    assert list(cfg.eval.scales) == ([256, 384, 480] if protocol == "multiscale" else [256])


def test_delving_eval_writes_predictions(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tiny_model()
    data_cfg = {
        "name": "folder",
        "root": str(data_root),
        "crop_size": 64,
        "use_draft": False,
        "num_workers": 0,
    }
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, dict(TINY_MODEL), data_cfg)
    cfg = compose_config(
        [
            f"checkpoint={checkpoint}",
            "eval=ten_view",
            "eval.num_workers=2",
            f"output={tmp_path / 'p.npz'}",
            "device=cpu",
        ],
        config_name="evaluate",
    )
    path = run_eval(cfg)
    with np.load(path, allow_pickle=False) as raw:
        meta = json.loads(str(raw["metadata"]))
        probs, labels = raw["probs"], raw["labels"]
    assert meta["checkpoint"]["sha256"] == file_sha256(checkpoint)
    assert meta["protocol"] == "ten_view" and meta["scales_px"] == [73] and meta["flips"] is True
    assert meta["model_config"]["name"] == "model_a" and meta["classes"] == ["class_0", "class_1", "class_2"]
    assert labels.tolist() == [0, 0, 1, 1, 2]  # data set order: class folders, then file names
    np.testing.assert_allclose(probs, _evaluate(model, data_root, protocol="ten_view"), atol=1e-6)
    out = capsys.readouterr().out
    assert f"| model_a | ten_view | [256] -> [73] | True | 5 | {meta['top1_error']:.2f} |" in out

    # data= picks the data set, but the input normalisation stays the one the model was trained with.
    cfg = compose_config(
        [
            f"checkpoint={checkpoint}",
            "eval=ten_view",
            "data=folder",
            f"data.root={data_root}",
            "data.num_workers=0",
            "data.use_draft=false",
            "data.normalize=mean_std",
            f"output={tmp_path / 'q.npz'}",
        ],
        config_name="evaluate",
    )
    with np.load(run_eval(cfg), allow_pickle=False) as raw:
        np.testing.assert_allclose(raw["probs"], probs, atol=1e-6)
    assert "data.normalize taken from the checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("tf32", [False, True])
def test_evaluate_runs_on_the_models_device_without_autotuning_and_records_the_float32_math(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tf32: bool
) -> None:
    """The batches go where the model is, not to the context's device (here a context naming another device);
    cuDNN autotuning is off during the evaluation (each new shape would be timed) and eval.tf32 sets the
    float32 math; both are as before afterwards."""
    from delving.dist import DistributedContext
    from delving.numerics import fp32_math

    root = write_image_folder(tmp_path, [(80, 64), (64, 96), (70, 70)])
    model = tiny_model()
    seen: list[tuple[torch.device, bool, dict[str, str]]] = []
    forward_dense = model.forward_dense

    def spy(batch: torch.Tensor) -> torch.Tensor:
        seen.append((batch.device, torch.backends.cudnn.benchmark, fp32_math()))
        return forward_dense(batch)

    monkeypatch.setattr(model, "forward_dense", spy)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # as the trainer leaves it on a GPU
    before = fp32_math()
    elsewhere = DistributedContext(0, 1, 0, torch.device("meta"))
    cfg = EvalConfig(protocol=Protocol.multiscale, scales=[256, 320], tf32=tf32)
    result = evaluate(model, folder_data_config(root), cfg, ctx=elsewhere, show_progress=False)
    math = "tf32" if tf32 else "ieee"
    assert len(seen) >= 2
    assert all(
        device == torch.device("cpu") and not benchmark and used == {"conv": math, "matmul": math}
        for device, benchmark, used in seen
    )
    assert torch.backends.cudnn.benchmark is True and fp32_math() == before
    assert result.metadata["float32_math"] == {"device": "cpu", "conv": "ieee", "matmul": "ieee"}
    assert np.isfinite(result.top1_error)
