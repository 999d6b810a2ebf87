"""The nets as timm models: one registration per net, a pretrained cfg whose transform feeds them exactly,
timm's keywords, feature maps and classifier methods, and the contract a checkpoint carries to delving-eval."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import FeatureListNet
from torch import nn

from delving.checkpoint import Checkpoint
from delving.data.config import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, DataConfig, Normalize
from delving.data.transforms import EvalTransform
from delving.evaluation.app import evaluation_data_config
from delving.models import MODEL_NAMES, TIMM_MODEL_NAMES, create_net
from delving.models import factory as timm_entries
from delving.models.contract import TIMM_PREFIX, center_crop_pct
from delving.paper import PAPER_MEAN_RGB

TINY = {"width": 1 / 16}  # the paper's input size, 1/16 of its widths: every map keeps its size
# A 64-pixel model A (a 4x4 last map); its test scale is round(256 * 64 / 224) = 73.
SMALL_A = {"width": 1 / 16, "input_size": 64, "spp_levels": [2, 1]}
# The last activation of each stage at 224: Table 3 (conv1 112, conv2 56, conv3 28, conv4 14; VGG-19 conv1
# to conv5 224 to 14) and Table 1 as built (paper.md 1.2: conv1 112, pool 3/3 -> 37, pool 2/2 -> 18).
PAPER_STAGE_MAPS = {
    "delving_model_a": [112, 56, 28, 14],
    "delving_model_b": [112, 56, 28, 14],
    "delving_model_c": [112, 56, 28, 14],
    "delving_vgg19": [224, 112, 56, 28, 14],
    "delving_net14": [112, 37, 18],
    "delving_net30": [112, 37, 18],
}
PAPER_STAGE_CHANNELS = {"delving_model_a": [96, 256, 512, 512], "delving_net14": [64, 128, 256]}


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


# ---------------------------------------------------------------- registration


def test_one_decorated_entry_point_per_net() -> None:
    assert timm.list_models("delving_*") == sorted(TIMM_MODEL_NAMES)
    for name in TIMM_MODEL_NAMES:
        entry = timm.models.model_entrypoint(name)
        # Written as `def delving_model_a(...)` in factory.py, not made by a loop (which names it otherwise).
        assert entry is getattr(timm_entries, name) and entry.__code__.co_name == name


@pytest.mark.parametrize("timm_name", TIMM_MODEL_NAMES)
def test_timm_create_model_builds_every_net(timm_name: str) -> None:
    small = {"width": 1 / 16, "input_size": 64} if "net" not in timm_name else {"width": 1 / 16}
    if "net" not in timm_name:
        small["spp_levels"] = [2, 1]
    model = timm.create_model(timm_name, num_classes=7, **small)
    size = small.get("input_size", 224)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert model.pretrained_cfg["input_size"] == (3, size, size)


# delving's commands build nets without timm (delving.models.build); timm users get theirs from timm's builder.
BUILD_OPTIONS = [
    {},
    {"num_classes": 7, "input_size": 64, "spp_levels": [2, 1]},
    {"act": "relu", "init": "xavier", "dropout": 0.0, "fc_init_std": [0.02, 0.02, 0.002], "fc_width": 64},
    {"init_prelu_factor": True, "num_classes": 3, "input_size": 96, "spp_levels": [2, 1]},
]


@pytest.mark.parametrize("options", BUILD_OPTIONS, ids=["paper", "small", "init", "prelu-factor"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_delvings_builder_gives_timms_net_and_contract(name: str, options: dict) -> None:
    """Layers, initial weights, pretrained cfg and what timm's tools read off a net are those timm gives."""
    options = {**options, "width": 1 / 16}
    torch.manual_seed(0)
    ours = create_net(name, **options)
    torch.manual_seed(0)
    theirs = timm.create_model(TIMM_PREFIX + name, **options)
    assert repr(ours) == repr(theirs)
    assert ours.pretrained_cfg == theirs.pretrained_cfg and ours.default_cfg is ours.pretrained_cfg
    for attribute in ("pretrained_model_args", "_model_args", "_traits", "model_name"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    for key, value in ours_state.items():
        assert torch.equal(value, theirs_state[key]), key


@pytest.mark.slow
def test_delving_commands_import_neither_timm_nor_torchvision() -> None:
    """Importing timm costs each launch seconds (torchvision, torch's compiler): training and eval avoid it,
    and torch's compiler itself (3 s on 2 cores), which only train.compile needs."""
    code = (
        "import sys\n"
        "import delving.cli.train, delving.cli.eval, delving.cli.ensemble, delving.cli.plan\n"
        "import delving.engine.trainer, delving.evaluation.evaluator, delving.data.loaders\n"
        "from delving.models import build_model\n"
        "from delving.checkpoint import Checkpoint\n"
        "build_model({'name': 'net14', 'width': 0.0625})\n"
        "from delving.evaluation.memory import dense_peak_bytes\n"  # the eval's memory check, with PReLU
        "dense_peak_bytes({'name': 'net14', 'width': 0.0625, 'act': 'prelu'}, 256, 2)\n"
        "print(sorted(m for m in ('timm', 'torchvision', 'pyarrow', 'torch._dynamo') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_pretrained_true_without_weights_is_refused() -> None:
    with pytest.raises(ValueError, match="no released weights"):
        timm.create_model("delving_net14", pretrained=True)


# ---------------------------------------------------------------- the pretrained cfg feeds the net exactly


def test_paper_mean_is_the_data_rooms_mean() -> None:
    assert list(PAPER_MEAN_RGB) == IMAGENET_MEAN_RGB


@pytest.mark.parametrize("name", TIMM_MODEL_NAMES)
def test_resolve_data_config_is_the_papers_input(name: str) -> None:
    model = _meta_model(name)
    config = resolve_data_config({}, model=model)
    assert config == {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": pytest.approx([m / 255 for m in IMAGENET_MEAN_RGB], abs=1e-12),
        "std": pytest.approx([1 / 255] * 3, abs=1e-12),
        "crop_pct": 224 / 256,
        "crop_mode": "center",
    }
    cfg = model.pretrained_cfg
    assert (cfg["normalize"], cfg["pixel_mean"], cfg.get("pixel_std")) == ("mean", PAPER_MEAN_RGB, None)
    large = name not in ("delving_net14", "delving_net30")
    assert cfg["test_scales"] == ((256, 384, 480) if large else (256,))
    assert cfg["protocol"] == ("multiscale" if large else "ten_view")
    first_conv = model.get_submodule(cfg["first_conv"])
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def test_crop_pct_gives_the_scaled_test_scale() -> None:
    # timm resizes the shorter side to floor(input_size / crop_pct): it must be delving's 256, scaled. The
    # plain ratio misses by one at 443, 815, ... (443 / (443 / 506) = 505.99999999999994).
    assert center_crop_pct(224) == 0.875
    for input_size in range(16, 1025):
        assert int(input_size / center_crop_pct(input_size)) == round(256 * input_size / 224), input_size


def _photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A smooth colour image with pixel noise (the resampling filters see edges), saved losslessly."""
    rng = np.random.default_rng(seed)
    width, height = size
    smooth = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    pixels = np.asarray(smooth.resize(size, Image.Resampling.BILINEAR), dtype=np.int64)
    pixels += rng.integers(-40, 41, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("name", "options", "crop", "test_scale"),
    [
        ("delving_model_a", {}, 224, 256),
        ("delving_net14", {}, 224, 256),
        ("delving_model_a", SMALL_A, 64, 73),
    ],
)
def test_timm_eval_transform_gives_our_eval_transform(
    name: str, options: dict, crop: int, test_scale: int, tmp_path: Path
) -> None:
    transform = create_transform(**resolve_data_config({}, model=_meta_model(name, **options)))
    ours = EvalTransform(DataConfig(crop_size=crop, test_scale=test_scale, use_draft=False))
    for seed, size in enumerate([(500, 375), (333, 500), (640, 427), (301, 299), (256, 256)]):
        path = _photo(tmp_path / f"img{seed}.png", size, seed)
        theirs = transform(Image.open(path).convert("RGB"))
        assert theirs.shape == (3, crop, crop)
        # 0-255 minus the mean colour on both sides; ours resamples only the crop window, which rounds a
        # few pixels to the next level (timm's tensor equals resizing the whole image to within 2e-5).
        assert (theirs - ours(path)).abs().max().item() <= 1 + 1e-4


def test_a_mean_std_run_gives_timm_its_std(tmp_path: Path) -> None:
    model = timm.create_model("delving_net14", **TINY)
    data = {"normalize": "mean_std", "mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB}
    cfg = Checkpoint.pretrained_cfg_of(model, {"data": data})
    config = resolve_data_config({}, pretrained_cfg=cfg)
    assert config["mean"] == pytest.approx([0.485, 0.456, 0.406]) and config["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    ours = EvalTransform(DataConfig(normalize=Normalize.mean_std, use_draft=False))
    path = _photo(tmp_path / "img.png", (400, 300), 0)
    diff = (create_transform(**config)(Image.open(path).convert("RGB")) - ours(path)).abs().max().item()
    assert diff <= (1 + 1e-4) / min(IMAGENET_STD_RGB)  # one level, divided by the std


# ---------------------------------------------------------------- timm's keywords


def test_timm_keywords() -> None:
    model = timm.create_model("delving_net14", in_chans=3, drop_rate=0.1, num_classes=5, **TINY)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.1]
    assert model.get_classifier().out_features == 5 and model.pretrained_cfg["num_classes"] == 5
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"in_chans=1: .*3 channels"):
        timm.create_model("delving_net14", in_chans=1, **TINY)
    with pytest.raises(ValueError, match=r"drop_rate .* or dropout"):
        timm.create_model("delving_net14", drop_rate=0.1, dropout=0.2, **TINY)


# ---------------------------------------------------------------- features_only


@pytest.mark.parametrize("name", TIMM_MODEL_NAMES)
def test_features_only_gives_the_stage_maps(name: str) -> None:
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True, **TINY)
    assert isinstance(features, FeatureListNet)
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 224, 224))
    info = features.feature_info
    assert len(maps) == len(info.out_indices) == len(PAPER_STAGE_MAPS[name])
    assert [m.shape[1] for m in maps] == info.channels()
    assert [m.shape[-1] for m in maps] == [224 // r for r in info.reduction()] == PAPER_STAGE_MAPS[name]
    if name in PAPER_STAGE_CHANNELS:
        assert info.channels() == [round(c / 16) for c in PAPER_STAGE_CHANNELS[name]]


def test_out_indices_and_maps_are_the_nets_own() -> None:
    torch.manual_seed(0)
    model = timm.create_model("delving_model_a", **TINY).eval()
    features = FeatureListNet(model, out_indices=(1, 3), flatten_sequential=True)
    assert features.feature_info.reduction() == [4, 16]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        stage2, last = features(x)
        torch.testing.assert_close(last, model.forward_features(x))
        torch.testing.assert_close(stage2, _run_to(model, "act2_5", x))
    picked = timm.create_model("delving_model_a", features_only=True, out_indices=(1, 3), **TINY)
    assert picked.feature_info.channels() == [16, 32]


def _run_to(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    for name, module in model.features.named_children():
        x = module(x)
        if name == layer:
            return x
    raise KeyError(layer)


# ---------------------------------------------------------------- classifier methods


def test_forward_is_forward_head_of_forward_features() -> None:
    torch.manual_seed(0)
    model = timm.create_model("delving_net14", num_classes=7, **TINY).eval()
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 18, 18)
        torch.testing.assert_close(model(x), model.forward_head(features))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)


def test_reset_classifier() -> None:
    torch.manual_seed(0)
    model = timm.create_model("delving_net14", num_classes=7, **TINY).eval()
    x = torch.randn(2, 3, 224, 224) * 50
    assert model.get_classifier() is model.head.fc3
    model.reset_classifier(3)
    fc3 = model.get_classifier()
    assert (model.num_classes, fc3.in_features, fc3.out_features) == (3, model.head_hidden_size, 3)
    assert fc3.weight.std().item() == pytest.approx(0.001, rel=0.15) and not fc3.bias.any()  # the paper's fc3
    with torch.no_grad():
        assert model(x).shape == (2, 3) and model.forward_dense(x).shape == (2, 1, 1, 3)
        model.reset_classifier(0)  # timm's convention: no classifier, the net returns its fc2 features
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)
    with pytest.raises(ValueError, match="SPP"):
        model.reset_classifier(3, global_pool="avg")


# ---------------------------------------------------------------- the contract in the checkpoint


def _tiny_run_config(data: dict) -> dict:
    return {"model": {"name": "model_a", **SMALL_A, "num_classes": 3}, "data": data}


def _saved(tmp_path: Path, data: dict, with_contract: bool = True) -> Checkpoint:
    config = _tiny_run_config(data)
    model = timm.create_model("delving_model_a", num_classes=3, **SMALL_A)
    contract = Checkpoint.pretrained_cfg_of(model, config) if with_contract else None
    Checkpoint(model.state_dict(), config, pretrained_cfg=contract).save(tmp_path / "last.pt")
    return Checkpoint.load(tmp_path / "last.pt")


def test_checkpoint_carries_the_contract_of_the_run(tmp_path: Path) -> None:
    data = {
        "name": "folder",
        "normalize": "mean_std",
        "mean": [100.0, 110.0, 120.0],
        "std": [50.0, 60.0, 70.0],
    }
    saved = _saved(tmp_path, data)
    contract = saved.pretrained_cfg
    assert contract["normalize"] == "mean_std" and contract["pixel_std"] == (50.0, 60.0, 70.0)
    assert contract["input_size"] == (3, 64, 64) and contract["num_classes"] == 3
    assert contract["test_scales"] == (256, 384, 480) and contract["protocol"] == "multiscale"
    loaded = saved.build_model()
    config = resolve_data_config({}, model=loaded)  # a timm user of the loaded net gets the run's input
    assert config["mean"] == pytest.approx([100 / 255, 110 / 255, 120 / 255])
    assert config["std"] == pytest.approx([50 / 255, 60 / 255, 70 / 255])
    assert config["input_size"] == (3, 64, 64) and config["crop_pct"] == 64 / 73
    # ... and so does one who passes the contract to timm as the pretrained cfg.
    rebuilt = timm.create_model("delving_model_a", pretrained_cfg=contract, num_classes=3, **SMALL_A)
    assert resolve_data_config({}, model=rebuilt) == config
    with pytest.raises(ValueError, match=r"neither timm nor delving knows: \['colour'\]"):
        timm.create_model("delving_model_a", pretrained_cfg={**contract, "colour": "rgb"}, **SMALL_A)


def test_evaluation_reads_the_contract_not_the_data_config(tmp_path: Path) -> None:
    saved = _saved(tmp_path, {"name": "folder", "normalize": "mean", "mean": [1.0, 2.0, 3.0]})
    saved.config["data"] = {"name": "folder", "normalize": "mean_std", "mean": [9.0, 9.0, 9.0]}  # ignored
    chosen = DataConfig(normalize=Normalize.mean_std, std=[5.0, 5.0, 5.0])
    data_cfg, notes = evaluation_data_config(chosen, saved)
    assert (data_cfg.normalize, data_cfg.mean) == (Normalize.mean, [1.0, 2.0, 3.0])
    assert data_cfg.std == [5.0, 5.0, 5.0]  # not divided by: the contract has no std, the choice stays
    assert notes == [
        "note: data.normalize taken from the checkpoint (mean), as the model was trained",
        "note: data.mean taken from the checkpoint ([1.0, 2.0, 3.0]), as the model was trained",
    ]


def test_older_checkpoints_fall_back_to_their_data_config(tmp_path: Path) -> None:
    saved = _saved(tmp_path, {"name": "folder", "normalize": "mean_std", "mean": [1.0, 2.0, 3.0]}, False)
    assert saved.pretrained_cfg is None
    assert saved.build_model().pretrained_cfg["normalize"] == "mean"  # the declared cfg, nothing saved
    data_cfg, notes = evaluation_data_config(DataConfig(), saved)
    assert (data_cfg.normalize, data_cfg.mean, data_cfg.std) == (
        Normalize.mean_std,
        [1.0, 2.0, 3.0],
        IMAGENET_STD_RGB,
    )
    assert len(notes) == 2


def test_the_trainer_saves_the_contract(single_run: Path) -> None:
    contract = Checkpoint.load(single_run / "last.pt").pretrained_cfg
    # conftest's tiny net14: a 24-pixel crop, 4 classes, the paper's input (mean colour, no division).
    assert (contract["architecture"], contract["input_size"], contract["num_classes"]) == (
        "delving_net14",
        (3, 24, 24),
        4,
    )
    assert (contract["normalize"], contract["pixel_mean"]) == ("mean", tuple(IMAGENET_MEAN_RGB))
    assert contract["std"] == (1 / 255,) * 3 and contract["protocol"] == "ten_view"
