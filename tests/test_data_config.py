from pathlib import Path

import pytest
from helpers.configs import compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from delving.config_files import config_dir
from delving.data.config import DataConfig, DatasetKind, Normalize, as_data_config, validate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _compose_data(name: str, overrides: list[str] = ()) -> DataConfig:
    return compose_config([f"+data={name}", *overrides], config_name=None).data


@pytest.mark.parametrize("name", [p.stem for p in sorted((config_dir() / "data").glob("*.yaml"))])
def test_every_data_yaml_composes_against_the_schema(name):
    data = _compose_data(name, [] if name == "synthetic" else ["data.root=/some/where"])
    assert OmegaConf.get_type(data) is DataConfig
    assert data.name == DatasetKind(name)
    cfg: DataConfig = OmegaConf.to_object(data)
    validate(cfg)
    assert cfg.normalize == Normalize.mean
    assert cfg.max_bad_fraction == pytest.approx(0.001)


def test_paper_and_synthetic_values():
    imagenet = _compose_data("imagenet", ["data.root=/x"])
    assert (imagenet.crop_size, imagenet.scale_min, imagenet.scale_max, imagenet.test_scale) == (
        224,
        256,
        512,
        256,
    )
    assert imagenet.pca_lighting_std == pytest.approx(0.1)
    synthetic = _compose_data("synthetic")
    assert (synthetic.crop_size, synthetic.scale_min, synthetic.scale_max, synthetic.test_scale) == (
        56,
        64,
        96,
        64,
    )
    assert synthetic.root is None


def test_wrong_enum_value_names_the_allowed_values():
    with pytest.raises(ConfigCompositionException) as bad_name:
        _compose_data("folder", ["data.root=/x", "data.name=imagenett"])
    assert isinstance(bad_name.value.__cause__, ValidationError)
    assert "[synthetic, imagenet, folder, shards, wds, parquet]" in str(bad_name.value.__cause__)
    with pytest.raises(ConfigCompositionException) as bad_norm:
        _compose_data("folder", ["data.root=/x", "data.normalize=std"])
    assert "[mean, mean_std, mean_image]" in str(bad_norm.value.__cause__)


def test_validate_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="crop_size <= scale_min"):
        validate(DataConfig(crop_size=300))
    with pytest.raises(ValueError, match="test_scale"):
        validate(DataConfig(test_scale=200))
    with pytest.raises(ValueError, match="3 values"):
        validate(DataConfig(mean=[1.0, 2.0]))


def test_as_data_config_accepts_hydra_and_plain_configs():
    typed = _compose_data("folder", ["data.root=/x", "data.crop_size=32", "data.scale_min=40"])
    cfg = as_data_config(typed)
    assert isinstance(cfg, DataConfig) and cfg.crop_size == 32 and cfg.name is DatasetKind.folder
    untyped = as_data_config(OmegaConf.create({"name": "shards", "root": "/y", "normalize": "mean_std"}))
    assert (
        untyped.name is DatasetKind.shards
        and untyped.normalize is Normalize.mean_std
        and untyped.crop_size == 224
    )
    with pytest.raises(ValidationError):
        as_data_config({"name": "nope"})
