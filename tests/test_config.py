import dataclasses
import json

import pytest

from contrastkit.config import METHOD_NAMES, TrainConfig
from contrastkit.errors import ConfigError
from contrastkit.methods import METHODS


def test_method_names_match_registry():
    assert set(METHOD_NAMES) == set(METHODS)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"epochs": 0}, "--epochs must be > 0"),
        ({"epochs": -3}, "--epochs must be > 0"),
        ({"temperature": 0.0}, "--temperature must be > 0"),
        ({"margin": -1.0}, "--margin must be > 0"),
        ({"margin": 0.0}, "--margin must be > 0"),
        ({"batch_size": 1}, "--batch-size must be at least 2"),
        ({"method": "nope"}, "simclr, pairwise, supcon, supervised"),
        ({"optimizer": "sgd"}, "adamw, lars"),
        ({"distance": "manhattan"}, "euclidean, cosine"),
        ({"precision": "int8"}, "auto, bf16, fp16, fp32"),
        ({"image_size": 4}, "--image-size must be at least 8"),
        ({"patience": -1}, "--patience must be >= 0"),
        ({"crop_min_scale": 0.0}, "--crop-min-scale must be in (0, 1]"),
        ({"crop_min_scale": 1.5}, "--crop-min-scale must be in (0, 1]"),
    ],
)
def test_bad_values_name_the_option_and_valid_values(kwargs, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**kwargs)


def test_round_trip_through_json(tmp_path):
    config = TrainConfig(epochs=3, lr=0.01, data="x.npz")
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 3


def test_unknown_keys_and_bad_json_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown configuration keys \\['epoch'\\]"):
        TrainConfig.from_dict({"epoch": 3})
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="c.json: not valid JSON"):
        TrainConfig.load(tmp_path / "c.json")


def test_default_learning_rates_follow_the_documented_rules():
    assert TrainConfig(optimizer="lars", batch_size=512).peak_lr == pytest.approx(0.6)
    assert TrainConfig(optimizer="adamw").peak_lr == pytest.approx(2e-3)
    assert TrainConfig(lr=0.05).peak_lr == 0.05
    assert TrainConfig(optimizer="lars").decay == 1e-6


def test_every_field_has_help():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name


def test_backbone_width_sets_small_cnn_channels_and_is_refused_elsewhere():
    from contrastkit.methods import build_method

    method = build_method(TrainConfig(backbone_width=48), in_channels=1)
    assert method.backbone.embed_dim == 384 and method.backbone.stem[0].out_channels == 48
    assert build_method(TrainConfig(), in_channels=1).backbone.embed_dim == 256
    with pytest.raises(ConfigError, match="--backbone-width applies to small_cnn only"):
        TrainConfig(backbone="resnet18", backbone_width=48)
    with pytest.raises(ConfigError, match="--backbone-width must be > 0"):
        TrainConfig(backbone_width=0)
