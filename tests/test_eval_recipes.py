"""The paper-table evaluation settings of issue 11: full-size JPEG decoding by default, and 10-view at any
shorter side (Table 5 at 256 and at 384, Table 4's best single scale)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from helpers.evaluation import folder_data_config, tiny_model, write_image_folder
from omegaconf import DictConfig
from PIL import Image

from delving.data.transforms import resize_shorter, to_model_input
from delving.evaluation import EvalConfig, evaluate
from delving.evaluation.config import effective_scales

SIZES = [(80, 64), (160, 128), (64, 96)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), SIZES)


def test_every_eval_protocol_decodes_at_full_size_by_default(
    compose_train: Callable[[list[str]], DictConfig],
) -> None:
    for protocol in ("center", "ten_view", "dense", "multiscale"):
        cfg = compose_train([f"eval={protocol}"])
        assert cfg.eval.draft is False and cfg.data.use_draft is True  # training keeps its draft speed-up


def test_the_predictions_file_records_the_decode(data_root: Path) -> None:
    result = evaluate(tiny_model(), folder_data_config(data_root), EvalConfig(protocol="center"))
    assert result.metadata["draft"] is False


@pytest.mark.parametrize("scale", [256, 384])
def test_ten_view_at_a_chosen_shorter_side_is_ten_crop_there(data_root: Path, scale: int) -> None:
    model = tiny_model()
    result = evaluate(model, folder_data_config(data_root), EvalConfig(protocol="ten_view", scales=[scale]))
    (shorter,) = effective_scales([scale], 64)
    path = sorted((data_root / "val").rglob("*.JPEG"))[0]
    image = to_model_input(resize_shorter(Image.open(path).convert("RGB"), shorter), folder_data_config(path))
    crops = torch.stack([*TF.five_crop(image, 64), *(TF.hflip(c) for c in TF.five_crop(image, 64))])
    with torch.no_grad():
        expected = F.softmax(model(crops), 1).mean(0)
    np.testing.assert_allclose(result.probs[0], expected.numpy(), atol=1e-5)
    assert result.metadata["scales"] == [scale] and result.metadata["scales_px"] == [shorter]


def test_ten_view_at_384_composes_as_an_option(compose_train: Callable[[list[str]], DictConfig]) -> None:
    cfg = compose_train(["experiment=table5_model_a_prelu", "eval.scales=[384]"])
    assert cfg.eval.protocol.value == "ten_view" and list(cfg.eval.scales) == [384]
