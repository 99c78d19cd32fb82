"""Tests for contrastkit.augment: shapes, reproducibility, and each operation against a reference."""

from __future__ import annotations

import ast
import colorsys
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.augment import (
    GRAY_WEIGHTS,
    AugmentConfig,
    ViewAugment,
    adjust_brightness_,
    adjust_contrast_,
    adjust_hue_,
    adjust_saturation_,
    channel_stats,
    default_recipe,
    erase_,
    gaussian_blur,
    resized_crop,
    sample_params,
    solarize_,
    to_float,
)
from contrastkit.errors import ConfigError, DataError

# Everything off: the view is the whole image, resized to `size`.
OFF = dict(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
    grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=gen(seed))


def normalised(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


def stats(c: int) -> tuple[list[float], list[float]]:
    return [0.3, 0.5, 0.4][:c], [0.2, 0.25, 0.3][:c]


# ---------------------------------------------------------------- shapes, determinism


@pytest.mark.parametrize(
    "c,h,w,size", [(1, 28, 28, 28), (3, 32, 32, 32), (3, 20, 24, 16), (1, 7, 7, 12), (3, 1, 1, 2)]
)
def test_shape_dtype_device(c: int, h: int, w: int, size: int) -> None:
    cfg = dataclasses.replace(default_recipe(c, size), blur_p=0.5, solarize_p=0.5)
    out = ViewAugment(cfg, *stats(c))(images(5, c, h, w), gen())
    assert out.shape == (5, c, size, size)
    assert out.dtype == torch.float32
    assert out.device == torch.device("cpu")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("b", [0, 1])
def test_tiny_batches(b: int) -> None:
    aug = ViewAugment(AugmentConfig(size=8, blur_p=0.5, solarize_p=0.5), *stats(3))
    assert aug(images(b, 3, 10, 10), gen()).shape == (b, 3, 8, 8)


def test_unnormalised_view_stays_in_unit_range() -> None:
    cfg = AugmentConfig(size=12, jitter_p=1.0, brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5,
                        grayscale_p=0.3, blur_p=0.5, solarize_p=0.5)
    aug = ViewAugment(cfg, *stats(3))
    x = images(16, 3, 10, 10)
    view = aug.apply(x, aug.params(x, gen()))
    assert view.min() >= 0 and view.max() <= 1


def test_same_seed_same_views_other_seed_other_views() -> None:
    aug = ViewAugment(default_recipe(3, 16), *stats(3))
    x = images(6, 3, 16, 16)
    a, b, c = aug(x, gen(1)), aug(x, gen(1)), aug(x, gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    g = gen(1)
    first, second = aug(x, g), aug(x, g)  # the generator advances: two different views
    assert torch.equal(first, a) and not torch.allclose(first, second)


def test_crop_draws_do_not_depend_on_other_options() -> None:
    base = AugmentConfig(size=8)
    other = dataclasses.replace(base, jitter_p=0.1, blur_p=0.7, solarize_p=0.3, grayscale_p=1.0)
    p, q = sample_params(base, 32, 8, 8, gen(3)), sample_params(other, 32, 8, 8, gen(3))
    for name in ("crop_w", "crop_h", "center_x", "center_y", "flip"):
        assert torch.equal(getattr(p, name), getattr(q, name))


def test_parameters_differ_across_the_batch() -> None:
    cfg = default_recipe(3, 16)
    p = sample_params(cfg, 64, 16, 16, gen())
    for name in ("crop_w", "center_x", "center_y", "brightness", "contrast", "saturation", "hue"):
        assert torch.unique(getattr(p, name)).numel() > 10, name
    assert 0 < int(p.flip.sum()) < 64
    # Eight copies of one image give eight different views.
    x = images(1, 3, 16, 16).expand(8, 3, 16, 16).contiguous()
    v = ViewAugment(cfg, *stats(3))(x, gen()).flatten(1)
    assert (torch.cdist(v, v) + torch.eye(8)).min() > 1e-3


# ---------------------------------------------------------------- crop and flip


@pytest.mark.parametrize("c", [1, 3])
def test_identity_config_returns_normalised_input(c: int) -> None:
    mean, std = stats(c)
    x = images(4, c, 9, 9)
    out = ViewAugment(AugmentConfig(size=9, **OFF), mean, std)(x, gen())
    torch.testing.assert_close(out, normalised(x, mean, std), atol=1e-5, rtol=0)


def test_flip_only_mirrors() -> None:
    mean, std = stats(3)
    x = images(3, 3, 6, 6)
    cfg = AugmentConfig(size=6, **{**OFF, "flip_p": 1.0})
    out = ViewAugment(cfg, mean, std)(x, gen())
    torch.testing.assert_close(out, normalised(x.flip(-1), mean, std), atol=1e-5, rtol=0)


@pytest.mark.parametrize("c,h,w", [(1, 12, 12), (3, 10, 14)])
def test_crop_matches_affine_grid_sample(c: int, h: int, w: int) -> None:
    """Up-sampling crops equal F.affine_grid + F.grid_sample (bilinear, border, align_corners=False)."""
    size = max(h, w)  # at most one input pixel per output pixel: no antialiasing
    cfg = AugmentConfig(size=size, crop_scale=(0.1, 1.0), crop_ratio=(0.5, 2.0), flip_p=0.5)
    x = images(16, c, h, w).float() / 255
    p = sample_params(cfg, 16, h, w, gen())
    theta = torch.zeros(16, 2, 3)
    theta[:, 0, 0] = torch.where(p.flip, -p.crop_w, p.crop_w)
    theta[:, 0, 2] = p.center_x
    theta[:, 1, 1] = p.crop_h
    theta[:, 1, 2] = p.center_y
    grid = F.affine_grid(theta, [16, c, size, size], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(resized_crop(x, p, size), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("h,size", [(16, 8), (12, 5), (4, 9)])
def test_whole_image_resize_matches_antialiased_interpolate(h: int, size: int) -> None:
    mean, std = stats(3)
    x = images(3, 3, h, h)
    ref = F.interpolate(x.float() / 255, size=(size, size), mode="bilinear", antialias=True)
    out = ViewAugment(AugmentConfig(size=size, **OFF), mean, std)(x, gen())
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (ref - m) / s, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, to_float(x, mean, std, size=size), atol=1e-5, rtol=0)


def test_crop_of_bright_left_half() -> None:
    """A quarter-area square crop of a half-bright image: its mean is the bright share of the crop."""
    x = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    x[..., :8] = 255
    cfg = AugmentConfig(size=16, **{**OFF, "crop_scale": (0.25, 0.25)})
    aug = ViewAugment(cfg, [0.0], [1.0])
    p = aug.params(x, gen())
    torch.testing.assert_close(p.crop_w, torch.full((64,), 0.5))
    torch.testing.assert_close(p.crop_h, torch.full((64,), 0.5))
    assert p.center_x.abs().max() <= 0.5 and p.center_y.abs().max() <= 0.5
    view = aug.apply(x, p)[:, 0]  # (B, S, S)
    torch.testing.assert_close(view, view[:, :1].expand_as(view), atol=1e-6, rtol=0)  # rows alike
    assert (view[:, :, 1:] <= view[:, :, :-1] + 1e-6).all()  # bright to dark, left to right
    # The crop spans [c - 0.5, c + 0.5] in normalised x; the bright half is x < 0.
    bright_share = (0.5 - p.center_x).clamp(0, 1)
    torch.testing.assert_close(view.mean(dim=(1, 2)), bright_share, atol=1 / 16, rtol=0)
    assert bright_share.min() < 0.2 and bright_share.max() > 0.8  # crops from all over the image


@pytest.mark.parametrize("ratio", [(3 / 4, 4 / 3), (0.1, 10.0), (5.0, 5.0)])
@pytest.mark.parametrize("hw", [(8, 8), (6, 15)])
def test_crops_stay_inside_and_keep_their_area(ratio: tuple[float, float], hw: tuple[int, int]) -> None:
    h, w = hw
    cfg = AugmentConfig(size=8, crop_scale=(0.08, 1.0), crop_ratio=ratio)
    p = sample_params(cfg, 500, h, w, gen())
    assert (p.crop_w > 0).all() and (p.crop_w <= 1).all() and (p.crop_h <= 1).all()
    assert (p.center_x.abs() + p.crop_w <= 1 + 1e-6).all()
    assert (p.center_y.abs() + p.crop_h <= 1 + 1e-6).all()
    area = p.crop_w * p.crop_h
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    # Area fraction uniform on [0.08, 1] (clamping keeps the area): mean 0.54.
    assert abs(float(area.mean()) - 0.54) < 0.05


def test_constant_image_stays_constant_under_any_crop() -> None:
    x = torch.full((32, 3, 9, 11), 200, dtype=torch.uint8)
    crops = {"crop_scale": (0.08, 1.0), "crop_ratio": (0.5, 2.0), "flip_p": 0.5}
    cfg = AugmentConfig(size=7, **{**OFF, **crops})
    aug = ViewAugment(cfg, [0.0] * 3, [1.0] * 3)
    torch.testing.assert_close(aug(x, gen()), torch.full((32, 3, 7, 7), 200 / 255), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- colour


def test_brightness_factors_in_range_and_applied() -> None:
    cfg = AugmentConfig(size=4, **{**OFF, "jitter_p": 1.0}, brightness=0.3, contrast=0.0)
    p = sample_params(cfg, 2000, 4, 4, gen())
    assert p.brightness.min() >= 0.7 and p.brightness.max() <= 1.3
    assert p.brightness.min() < 0.71 and p.brightness.max() > 1.29  # the whole range is used
    off = sample_params(dataclasses.replace(cfg, jitter_p=0.0), 50, 4, 4, gen())
    assert torch.equal(off.brightness, torch.ones(50)) and torch.equal(off.hue, torch.zeros(50))
    x = torch.full((16, 1, 4, 4), 100, dtype=torch.uint8)
    aug = ViewAugment(cfg, [0.0], [1.0])
    p = aug.params(x, gen(5))
    view = aug.apply(x, p)
    torch.testing.assert_close(view, (100 / 255 * p.brightness).view(16, 1, 1, 1).expand(16, 1, 4, 4))


def test_jitter_probability() -> None:
    p = sample_params(AugmentConfig(size=4, jitter_p=0.25), 4000, 4, 4, gen())
    share = float((p.brightness != 1).float().mean())
    assert abs(share - 0.25) < 0.03


def test_brightness_clamps() -> None:
    x = torch.tensor([0.2, 0.6, 0.9]).view(1, 1, 1, 3)
    out = adjust_brightness_(x.clone(), torch.tensor([1.5]))
    torch.testing.assert_close(out, torch.tensor([0.3, 0.9, 1.0]).view(1, 1, 1, 3))


@pytest.mark.parametrize("c", [1, 3])
def test_contrast_blends_with_mean_gray(c: int) -> None:
    x = torch.rand(3, c, 5, 4, generator=gen())
    f = torch.tensor([0.5, 1.0, 1.8])
    gray = x[:, 0] if c == 1 else sum(w * x[:, i] for i, w in enumerate(GRAY_WEIGHTS))
    mean = gray.mean(dim=(1, 2)).view(3, 1, 1, 1)
    ref = (f.view(3, 1, 1, 1) * x + (1 - f.view(3, 1, 1, 1)) * mean).clamp(0, 1)
    torch.testing.assert_close(adjust_contrast_(x.clone(), f), ref)


def test_saturation_blends_with_grayscale() -> None:
    x = torch.rand(3, 3, 4, 4, generator=gen())
    f = torch.tensor([0.0, 1.0, 1.4]).view(3, 1, 1, 1)
    gray = sum(w * x[:, i : i + 1] for i, w in enumerate(GRAY_WEIGHTS))
    out = adjust_saturation_(x.clone(), f.view(3))
    torch.testing.assert_close(out, (f * x + (1 - f) * gray).clamp(0, 1))
    torch.testing.assert_close(out[0], gray[0].expand(3, 4, 4))  # factor 0: fully gray
    torch.testing.assert_close(out[1], x[1])  # factor 1: unchanged


def test_hue_matches_colorsys() -> None:
    x = torch.rand(4, 3, 4, 5, generator=gen())
    x[0, :, 0, 0] = 0.5  # gray pixel
    x[1, 1, 0, 0] = x[1, 0, 0, 0]  # red and green tie for the max
    x[2, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    shift = torch.tensor([0.0, 0.1, -0.37, 0.5])
    out = adjust_hue_(x.clone(), shift)
    ref = torch.empty_like(x)
    for i in range(4):
        for r in range(4):
            for col in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[i, :, r, col].tolist())
                ref[i, :, r, col] = torch.tensor(colorsys.hsv_to_rgb((h + float(shift[i])) % 1.0, s, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_grayscale_p1_gives_601_luma_in_all_channels() -> None:
    x = images(4, 3, 5, 5)
    cfg = AugmentConfig(size=5, **{**OFF, "grayscale_p": 1.0})
    view = ViewAugment(cfg, [0.0] * 3, [1.0] * 3)(x, gen())
    xf = x.double() / 255
    luma = 0.299 * xf[:, 0] + 0.587 * xf[:, 1] + 0.114 * xf[:, 2]
    for ch in range(3):
        torch.testing.assert_close(view[:, ch].double(), luma, atol=1e-6, rtol=0)


def test_grayscale_and_colour_ops_skip_single_channel() -> None:
    x = images(8, 1, 6, 6)
    cfg = AugmentConfig(size=6, **{**OFF, "grayscale_p": 1.0, "jitter_p": 1.0}, brightness=0.0,
                        contrast=0.0, saturation=0.9, hue=0.5)
    out = ViewAugment(cfg, [0.0], [1.0])(x, gen())
    torch.testing.assert_close(out, x.float() / 255, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- blur and solarize


def blur_reference(img: np.ndarray, sigma: float, k: int) -> np.ndarray:
    """2-D convolution with the outer product of the 1-D Gaussian, reflect padding, plain loops."""
    half = k // 2
    t = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    kernel = np.outer(g, g)
    padded = np.pad(img, half, mode="reflect")
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            out[i, j] = (padded[i : i + k, j : j + k] * kernel).sum()
    return out


def test_blur_matches_reference_per_sample() -> None:
    x = torch.rand(3, 2, 7, 9, generator=gen())
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = gaussian_blur(x, sigma, 5)
    for b in range(3):
        for c in range(2):
            ref = blur_reference(x[b, c].double().numpy(), float(sigma[b]), 5)
            np.testing.assert_allclose(out[b, c].numpy(), ref, atol=1e-5)


def test_blur_keeps_constant_and_smooths_noise() -> None:
    sigma = torch.tensor([0.5, 1.0, 2.0])
    const = torch.full((3, 1, 10, 10), 0.37)
    torch.testing.assert_close(gaussian_blur(const, sigma, 5), const, atol=1e-6, rtol=0)
    noise = torch.rand(3, 1, 16, 16, generator=gen())
    blurred = gaussian_blur(noise, sigma, 5)
    torch.testing.assert_close(blurred.mean(dim=(1, 2, 3)), noise.mean(dim=(1, 2, 3)), atol=0.02, rtol=0)
    var = blurred.var(dim=(1, 2, 3))
    assert (var < 0.6 * noise.var(dim=(1, 2, 3))).all()
    assert var[2] < var[1] < var[0]  # wider Gaussian, smoother


def test_blur_only_on_chosen_samples() -> None:
    x = images(32, 3, 8, 8)
    cfg = AugmentConfig(size=8, **{**OFF, "blur_p": 0.5}, blur_sigma=(1.0, 2.0))
    aug = ViewAugment(cfg, [0.0] * 3, [1.0] * 3)
    p = aug.params(x, gen())
    assert 0 < int(p.blur.sum()) < 32
    view = aug.apply(x, p)
    plain = x.float() / 255
    torch.testing.assert_close(view[~p.blur], plain[~p.blur], atol=1e-6, rtol=0)
    assert ((view[p.blur] - plain[p.blur]).abs().amax(dim=(1, 2, 3)) > 0.01).all()


def test_blur_kernel_size() -> None:
    assert AugmentConfig(size=224).blur_kernel_size == 23  # SimCLR: 10% of 224, odd
    assert AugmentConfig(size=96).blur_kernel_size == 9
    assert AugmentConfig(size=28).blur_kernel_size == 3
    assert AugmentConfig(size=1).blur_kernel_size == 3


def test_solarize_threshold_zero_inverts() -> None:
    x = images(4, 3, 5, 5)
    cfg = AugmentConfig(size=5, **{**OFF, "solarize_p": 1.0, "solarize_threshold": 0.0})
    view = ViewAugment(cfg, [0.0] * 3, [1.0] * 3)(x, gen())
    torch.testing.assert_close(view, 1 - x.float() / 255, atol=1e-6, rtol=0)


def test_solarize_threshold_and_choice() -> None:
    x = torch.tensor([0.0, 0.49, 0.5, 0.8]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    out = solarize_(x.clone(), torch.tensor([True, False]), 0.5)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.49, 0.5, 0.2]))
    torch.testing.assert_close(out[1], x[1])


# ---------------------------------------------------------------- evaluation transform and stats


def test_erase_sets_exactly_the_pixels_whose_centres_fall_in_the_box() -> None:
    """Box (0.25, 0.5)-(0.75, 1.0) of an 8 px view: columns 2-5, rows 4-7 (centres 2.5/8 ... 5.5/8) take the fill."""
    x = torch.rand(2, 3, 8, 8, generator=gen(1))
    before = x.clone()
    box = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 1.0, 1.0]])
    erase_(x, torch.tensor([True, False]), box, fill=(0.1, 0.2, 0.3))
    expect = before.clone()
    expect[0, :, 4:8, 2:6] = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    assert torch.equal(x, expect)  # the second view is not chosen: unchanged although its box is everything


def test_erasing_area_probability_and_normalised_fill() -> None:
    """Erased area fractions follow erase_scale (up to pixel rounding), p is respected, the fill normalises to 0."""
    cfg = AugmentConfig(size=32, **{**OFF, "erase_p": 0.5, "erase_scale": (0.1, 0.2), "erase_ratio": (0.5, 2.0)})
    mean, std = [0.3], [0.2]
    x = torch.full((4000, 1, 32, 32), 255, dtype=torch.uint8)
    v = ViewAugment(cfg, mean, std)(x, gen(2))
    erased = (v == 0).float().mean((1, 2, 3))  # (B,) the share of pixels at the normalised mean
    chosen = erased > 0
    assert abs(float(chosen.float().mean()) - 0.5) < 0.03
    assert float(erased[chosen].min()) > 0.06 and float(erased[chosen].max()) < 0.26
    assert abs(float(erased[chosen].mean()) - 0.15) < 0.01
    assert torch.equal(v[~chosen], torch.full_like(v[~chosen], (1 - 0.3) / 0.2))


def test_erasing_off_keeps_the_random_stream() -> None:
    """Recipes without erasing draw exactly what they drew before erasing existed (one (B, 14) draw)."""
    cfg = dataclasses.replace(default_recipe(1, 28), erase_p=0.0)
    p = sample_params(cfg, 16, 28, 28, gen(3))
    g = gen(3)
    u = torch.rand((16, 14), generator=g)
    assert p.erase is None and p.erase_box is None
    assert torch.equal(p.flip, u[:, 4] < cfg.flip_p)
    on = sample_params(dataclasses.replace(cfg, erase_p=1.0), 16, 28, 28, gen(3))
    assert torch.equal(on.crop_w, p.crop_w) and on.erase.all() and on.erase_box.shape == (16, 4)


def test_to_float_without_size_is_normalised_input() -> None:
    mean, std = stats(3)
    x = images(2, 3, 5, 6)
    torch.testing.assert_close(to_float(x, mean, std), normalised(x, mean, std))


def test_to_float_resizes_short_side_and_centre_crops() -> None:
    x = images(2, 1, 4, 8)
    out = to_float(x, [0.0], [1.0], size=4)
    torch.testing.assert_close(out, x[..., 2:6].float() / 255, atol=1e-6, rtol=0)
    tall = x.transpose(2, 3).contiguous()  # 8 x 4
    out = to_float(tall, [0.0], [1.0], size=4)
    torch.testing.assert_close(out, tall[..., 2:6, :].float() / 255, atol=1e-6, rtol=0)
    big = images(2, 3, 8, 16)
    out = to_float(big, [0.0] * 3, [1.0] * 3, size=4)
    ref = F.interpolate(big.float() / 255, size=(4, 8), mode="bilinear", antialias=True)
    torch.testing.assert_close(out, ref[..., 2:6], atol=1e-6, rtol=0)


def test_channel_stats_against_numpy() -> None:
    x = images(7, 3, 5, 4)
    ref = x.numpy().astype(np.float64) / 255
    mean, std = channel_stats(x, chunk=100)  # several chunks
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-12)
    assert channel_stats(x) == (mean, std)  # one chunk, same numbers


def test_channel_stats_tiny_and_errors() -> None:
    mean, std = channel_stats(torch.full((1, 1, 1, 1), 51, dtype=torch.uint8))
    assert mean == [0.2] and std == [0.0]
    with pytest.raises(DataError, match="at least one"):
        channel_stats(torch.zeros(0, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(DataError, match="uint8"):
        channel_stats(torch.zeros(2, 1, 4, 4))


# ---------------------------------------------------------------- recipes and validation


def test_default_recipes() -> None:
    gray = default_recipe(1, 28)
    assert gray.crop_scale == (0.8, 1.0) and gray.blur_p == 0 and gray.solarize_p == 0
    assert gray.saturation == 0 and gray.hue == 0 and gray.grayscale_p == 0 and (gray.brightness, gray.contrast) == (0.8, 0.8)
    cifar = default_recipe(3, 32)
    assert (cifar.brightness, cifar.contrast, cifar.saturation, cifar.hue) == (0.4, 0.4, 0.4, 0.1)
    assert cifar.crop_scale == (0.08, 1.0) and cifar.grayscale_p == 0.2 and cifar.blur_p == 0
    imagenet = default_recipe(3, 224)
    assert imagenet.blur_p == 0.5 and imagenet.solarize_p == 0.2 and imagenet.blur_kernel_size == 23
    assert imagenet.size == 224
    with pytest.raises(ConfigError, match="channels"):
        default_recipe(0, 28)
    with pytest.raises(ConfigError, match="size"):
        default_recipe(3, "32")  # type: ignore[arg-type]


def test_config_survives_json() -> None:
    cfg = default_recipe(3, 32)
    back = AugmentConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg and isinstance(back.crop_scale, tuple)
    from_numpy = AugmentConfig(size=np.int64(28), flip_p=np.float32(0.25))
    assert type(from_numpy.size) is int and type(from_numpy.flip_p) is float and from_numpy.size == 28


@pytest.mark.parametrize(
    "field,value,expect",
    [
        ("size", 0, "size"),
        ("size", 2.5, "size"),
        ("crop_scale", (0.0, 1.0), r"crop_scale.*0 < lo <= hi <= 1"),
        ("crop_scale", (0.5, 0.2), "crop_scale"),
        ("crop_scale", (0.5, 1.5), "crop_scale"),
        ("crop_scale", (0.5,), "crop_scale"),
        ("crop_ratio", (0.0, 1.0), "crop_ratio"),
        ("crop_ratio", (2.0, 1.0), "crop_ratio"),
        ("flip_p", 1.5, r"flip_p must be in \[0, 1\]"),
        ("jitter_p", -0.1, "jitter_p"),
        ("grayscale_p", math.nan, "grayscale_p"),
        ("blur_p", 2, "blur_p"),
        ("solarize_p", -1, "solarize_p"),
        ("solarize_threshold", 1.5, "solarize_threshold"),
        ("blur_sigma", (0.0, 1.0), r"blur_sigma.*0 < lo"),
        ("blur_sigma", (2.0, 1.0), "blur_sigma"),
        ("brightness", -0.1, "brightness"),
        ("contrast", math.inf, "contrast"),
        ("saturation", "0.4", "saturation"),
        ("hue", 0.6, r"hue must be in \[0, 0.5\]"),
        ("erase_p", 1.5, r"erase_p must be in \[0, 1\]"),
        ("erase_scale", (0.0, 0.2), r"erase_scale.*0 < lo <= hi <= 1"),
        ("erase_ratio", (3.0, 0.3), "erase_ratio"),
    ],
)
def test_config_validation(field: str, value: object, expect: str) -> None:
    kwargs = {"size": 8, field: value}
    with pytest.raises(ConfigError, match=expect):
        AugmentConfig(**kwargs)  # type: ignore[arg-type]


def test_view_augment_rejects_bad_stats_and_images() -> None:
    cfg = AugmentConfig(size=4)
    with pytest.raises(ConfigError, match="one value per channel"):
        ViewAugment(cfg, [0.5, 0.5], [0.2])
    with pytest.raises(ConfigError, match="std > 0"):
        ViewAugment(cfg, [0.5], [0.0])
    aug = ViewAugment(cfg, [0.5], [0.2])
    with pytest.raises(DataError, match="uint8"):
        aug(torch.zeros(2, 1, 4, 4), gen())
    with pytest.raises(DataError, match="uint8"):
        aug(torch.zeros(1, 4, 4, dtype=torch.uint8), gen())
    with pytest.raises(DataError, match="3 channels"):
        aug(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), gen())
    with pytest.raises(ConfigError, match="size"):
        to_float(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0.5], [0.2], size=0)


def test_no_torchvision_import() -> None:
    """No module of the augment package imports torchvision or PIL, even inside a function."""
    from pathlib import Path

    import contrastkit.augment as package

    imported: set[str] = set()
    for path in Path(package.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "torch" in imported and "contrastkit.augment.ops" in imported
    assert not any(name.split(".")[0] in ("torchvision", "PIL") for name in imported)
