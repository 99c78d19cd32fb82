"""Tests for contrastkit.models: backbones (registry, shapes, precision, init) and heads."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from contrastkit.errors import ConfigError, DataError
from contrastkit.models.backbones import (
    BACKBONES,
    SeedCNN,
    SmallCNN,
    build_backbone,
    resnet18,
)
from contrastkit.models.heads import ProjectionHead

EMBED_DIMS = {"seed_cnn": 1024, "small_cnn": 256, "resnet18": 512, "resnet34": 512, "resnet50": 2048}
BN_BACKBONES = ["small_cnn", "resnet18", "resnet34", "resnet50"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny shapes gain nothing from threads, and spinning threads crawl on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@lru_cache(maxsize=None)
def _eval_backbone(name: str, in_channels: int) -> nn.Module:
    """A shared backbone in eval mode, only ever run under no_grad (never mutated)."""
    torch.manual_seed(0)
    return build_backbone(name, in_channels).eval()


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


# ---------------------------------------------------------------- registry


def test_registry_holds_exactly_the_documented_backbones() -> None:
    assert set(BACKBONES) == set(EMBED_DIMS)


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone("resnet19", 3)
    msg = str(info.value)
    assert "'resnet19'" in msg
    for name in BACKBONES:
        assert name in msg


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_bad_in_channels_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="in_channels must be a positive integer"):
        build_backbone("small_cnn", bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_output_shape_and_embed_dim(name: str, in_channels: int, size: int) -> None:
    model = _eval_backbone(name, in_channels)
    assert model.embed_dim == EMBED_DIMS[name]
    batch = 1 if name == "resnet50" else 3
    with torch.no_grad():
        out = model(torch.randn(batch, in_channels, size, size))
    assert out.shape == (batch, EMBED_DIMS[name])
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_smallest_and_non_square_images_work(name: str) -> None:
    model = _eval_backbone(name, 1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, EMBED_DIMS[name])
        assert model(torch.randn(2, 1, 8, 13)).shape == (2, EMBED_DIMS[name])


@pytest.mark.parametrize("name", ["seed_cnn", "small_cnn", "resnet18"])
def test_training_mode_works_at_the_smallest_size(name: str) -> None:
    model = build_backbone(name, 3).train()
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, EMBED_DIMS[name])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("hw", [(7, 8), (8, 7), (4, 4)])
def test_too_small_images_fail_with_a_message(hw: tuple[int, int]) -> None:
    model = _eval_backbone("small_cnn", 1)
    with pytest.raises(DataError, match=rf"small_cnn: images must be at least 8 x 8 pixels, got {hw[0]} x {hw[1]}"):
        model(torch.randn(2, 1, *hw))


def test_wrong_channel_count_fails_with_a_message() -> None:
    model = _eval_backbone("resnet18", 1)
    with pytest.raises(DataError, match=r"resnet18: built for 1 image channel\(s\), got images with 3 channel\(s\)"):
        model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    "x", [torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.randn(1, 28, 28)], ids=["uint8", "3d"]
)
def test_non_float_or_wrong_rank_input_fails_with_a_message(x: torch.Tensor) -> None:
    model = _eval_backbone("seed_cnn", 1)
    with pytest.raises(DataError, match=r"seed_cnn: expected float images of shape \(B, C, H, W\)"):
        model(x)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_batch_of_one_in_training_mode_is_a_config_error(name: str) -> None:
    model = build_backbone(name, 1).train()
    with pytest.raises(ConfigError, match=rf"{name}: batch norm needs at least 2 images per batch"):
        model(torch.randn(1, 1, 28, 28))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28)).shape == (1, EMBED_DIMS[name])


def test_seed_cnn_has_no_batch_norm_and_trains_on_one_image() -> None:
    model = SeedCNN(1).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 1024)


@pytest.mark.parametrize("name", ["seed_cnn", "small_cnn", "resnet50"])
def test_no_hard_coded_device(name: str) -> None:
    """Forward on the meta device: any tensor created on a fixed device would clash."""
    model = build_backbone(name, 3).to("meta")
    out = model(torch.empty(2, 3, 32, 32, device="meta"))
    assert out.device.type == "meta"
    assert out.shape == (2, EMBED_DIMS[name])


def test_torchvision_is_not_imported_by_the_models_package() -> None:
    models_dir = Path(__file__).parents[1] / "src" / "contrastkit" / "models"
    for path in models_dir.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+torchvision", text, re.MULTILINE), path


# ---------------------------------------------------------------- precision and memory format


@pytest.mark.parametrize("name", ["seed_cnn", "small_cnn", "resnet18", "resnet50"])  # resnet34: same blocks as 18
def test_channels_last_bf16_autocast_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    size = 28 if name in ("seed_cnn", "small_cnn") else 8
    model = build_backbone(name, 3).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, EMBED_DIMS[name])
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_small_cnn_bf16_channels_last_matches_fp32() -> None:
    torch.manual_seed(0)
    model = SmallCNN(1).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.contiguous(memory_format=torch.channels_last)).float()
    rel = (low - ref).norm() / ref.norm()
    assert rel < 0.05, f"relative error {rel:.4f}"
    cos = torch.nn.functional.cosine_similarity(low, ref, dim=1)
    assert cos.min() > 0.99


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_gradients_reach_the_first_conv(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, 1).train()
    conv = _first_conv(model)
    assert conv.in_channels == 1
    size = 16 if name in ("seed_cnn", "small_cnn") else 8
    model(torch.randn(2, 1, size, size)).square().mean().backward()
    assert conv.weight.grad is not None
    assert torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- seed_cnn layout


def test_seed_cnn_parameter_layout() -> None:
    shapes = {n: tuple(p.shape) for n, p in SeedCNN(1).named_parameters()}
    assert shapes == {
        "conv1.weight": (64, 1, 5, 5),
        "conv1.bias": (64,),
        "conv2.weight": (128, 64, 5, 5),
        "conv2.bias": (128,),
        "fc.weight": (1024, 128 * 7 * 7),
        "fc.bias": (1024,),
    }
    assert sum(p.numel() for p in SeedCNN(1).parameters()) == 1_664 + 204_928 + 6_423_552


def test_seed_cnn_kernel_size_3_and_validation() -> None:
    shapes = {n: tuple(p.shape) for n, p in SeedCNN(3, kernel_size=3).named_parameters()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["conv2.weight"] == (128, 64, 3, 3)
    with pytest.raises(ConfigError, match="kernel_size must be 3 or 5, got 4"):
        SeedCNN(1, kernel_size=4)


def test_seed_cnn_is_the_classic_28_14_7_design_at_28_px() -> None:
    model = SeedCNN(1).eval()
    seen: dict[str, tuple[int, ...]] = {}
    model.to_7x7.register_forward_hook(lambda m, i, o: seen.update(pool_in=tuple(i[0].shape), pool_out=tuple(o.shape)))
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    assert seen["pool_in"] == seen["pool_out"] == (2, 128, 7, 7)


# ---------------------------------------------------------------- small_cnn


def _small_cnn_param_count(c: int, w: int) -> int:
    def conv_bn(i: int, o: int) -> int:
        return i * o * 9 + 2 * o

    return (
        conv_bn(c, w)
        + conv_bn(w, 2 * w) + 2 * conv_bn(2 * w, 2 * w)
        + conv_bn(2 * w, 4 * w)
        + conv_bn(4 * w, 8 * w) + 2 * conv_bn(8 * w, 8 * w)
    )


@pytest.mark.parametrize("width", [8, 32, 64])
def test_small_cnn_width_sets_embed_dim_and_parameter_count(width: int) -> None:
    model = SmallCNN(3, width=width).eval()
    assert model.embed_dim == 8 * width
    assert sum(p.numel() for p in model.parameters()) == _small_cnn_param_count(3, width)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 8 * width)


def test_small_cnn_registry_default_is_width_32() -> None:
    model = build_backbone("small_cnn", 1)
    assert sum(p.numel() for p in model.parameters()) == _small_cnn_param_count(1, 32) == 1_642_976


@pytest.mark.parametrize("bad", [0, -4, 2.0])
def test_small_cnn_bad_width(bad: object) -> None:
    with pytest.raises(ConfigError, match="small_cnn: width must be a positive integer"):
        SmallCNN(1, width=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- ResNets


def _conv(i: int, o: int, k: int) -> int:
    return i * o * k * k


def _bn(c: int) -> int:
    return 2 * c


def _cifar_resnet_param_count(c: int, bottleneck: bool, layers: tuple[int, ...]) -> int:
    """Parameters of a CIFAR ResNet without fc, summed from the architecture (arXiv:1512.03385)."""
    total = _conv(c, 64, 3) + _bn(64)  # 3x3 stride-1 stem
    expansion = 4 if bottleneck else 1
    in_ch = 64
    for planes, n, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2)):
        for i in range(n):
            s = stride if i == 0 else 1
            out_ch = planes * expansion
            if bottleneck:
                total += _conv(in_ch, planes, 1) + _bn(planes)
                total += _conv(planes, planes, 3) + _bn(planes)
                total += _conv(planes, out_ch, 1) + _bn(out_ch)
            else:
                total += _conv(in_ch, planes, 3) + _bn(planes)
                total += _conv(planes, planes, 3) + _bn(planes)
            if s != 1 or in_ch != out_ch:
                total += _conv(in_ch, out_ch, 1) + _bn(out_ch)  # projection shortcut
            in_ch = out_ch
    return total


def test_resnet18_parameter_count_matches_the_known_cifar_figure() -> None:
    assert _cifar_resnet_param_count(3, False, (2, 2, 2, 2)) == 11_168_832
    assert sum(p.numel() for p in build_backbone("resnet18", 3).parameters()) == 11_168_832
    assert sum(p.numel() for p in build_backbone("resnet18", 1).parameters()) == (
        _cifar_resnet_param_count(1, False, (2, 2, 2, 2))
    )


@pytest.mark.parametrize(
    ("name", "bottleneck", "layers", "known"),
    [("resnet34", False, (3, 4, 6, 3), 21_276_992), ("resnet50", True, (3, 4, 6, 3), 23_500_352)],
)
def test_deeper_resnet_parameter_counts(name: str, bottleneck: bool, layers: tuple[int, ...], known: int) -> None:
    assert _cifar_resnet_param_count(3, bottleneck, layers) == known
    assert sum(p.numel() for p in build_backbone(name, 3).parameters()) == known


def test_resnet_has_no_max_pool_and_a_stride_1_3x3_stem() -> None:
    model = build_backbone("resnet18", 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stem = _first_conv(model)
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.out_channels == 64


def test_resnet_zero_init_residual_makes_blocks_identity() -> None:
    torch.manual_seed(0)
    model = resnet18(3, zero_init_residual=True).eval()
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for layer in (model.layer1, model.layer2) for b in layer)
    x = torch.rand(2, 64, 8, 8)  # non-negative, as after the stem's ReLU
    with torch.no_grad():
        torch.testing.assert_close(model.layer1(x), x)
    default = resnet18(3)
    assert all(bool((b.bn2.weight == 1).all()) for b in default.layer1)


def test_convs_get_kaiming_normal_fan_out_init() -> None:
    torch.manual_seed(0)
    conv = build_backbone("resnet18", 3).layer4[1].conv2  # 512 x 512 x 3 x 3
    expected_std = (2.0 / (512 * 9)) ** 0.5
    weight = conv.weight.detach()
    assert abs(float(weight.std()) / expected_std - 1) < 0.02
    assert abs(float(weight.mean())) < 0.01 * expected_std


# ---------------------------------------------------------------- ProjectionHead


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_projection_head_shapes_and_structure(num_layers: int, batch_norm: bool) -> None:
    head = ProjectionHead(16, 32, 8, num_layers=num_layers, batch_norm=batch_norm)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 8)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == (
        [(16, 8)] if num_layers == 1 else [(16, 32)] + [(32, 32)] * (num_layers - 2) + [(32, 8)]
    )
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == (num_layers - 1 if batch_norm else 0)
    assert sum(isinstance(m, nn.ReLU) for m in head.modules()) == num_layers - 1
    assert isinstance(head.mlp[-1], nn.Linear)  # the last layer has no ReLU
    assert linears[-1].bias is not None
    assert all((m.bias is None) == batch_norm for m in linears[:-1])


def test_projection_head_simclr_layout_and_negative_outputs() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(512, 512, 128)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    out = head(torch.randn(64, 512))
    assert out.shape == (64, 128)
    assert (out < 0).any()  # no ReLU after the last Linear
    assert sum(p.numel() for p in head.parameters()) == 512 * 512 + 2 * 512 + 512 * 128 + 128


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_dim": 0}, "in_dim must be a positive integer, got 0"),
        ({"hidden_dim": -1}, "hidden_dim must be a positive integer, got -1"),
        ({"out_dim": 2.5}, "out_dim must be a positive integer, got 2.5"),
        ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
        ({"batch_norm": "yes"}, "batch_norm must be True or False, got 'yes'"),
    ],
)
def test_projection_head_validation(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"in_dim": 8, "hidden_dim": 8, "out_dim": 4, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(f"ProjectionHead: {message}")):
        ProjectionHead(**args)  # type: ignore[arg-type]


def test_projection_head_wrong_feature_shape() -> None:
    head = ProjectionHead(16, 32, 8)
    with pytest.raises(DataError, match=r"expected features of shape \(B, 16\), got \(4, 12\)"):
        head(torch.randn(4, 12))


def test_projection_head_batch_of_one() -> None:
    head = ProjectionHead(16, 32, 8).train()
    with pytest.raises(ConfigError, match="batch norm needs at least 2 items"):
        head(torch.randn(1, 16))
    assert head.eval()(torch.randn(1, 16)).shape == (1, 8)
    assert ProjectionHead(16, 32, 8, batch_norm=False).train()(torch.randn(1, 16)).shape == (1, 8)


def test_projection_head_on_a_backbone_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", 1)
    head = ProjectionHead(backbone.embed_dim, 64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head(backbone(torch.randn(4, 1, 28, 28)))
    assert z.shape == (4, 16)
    z.float().square().mean().backward()
    assert _first_conv(backbone).weight.grad is not None
