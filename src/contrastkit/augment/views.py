"""ViewAugment (the whole pipeline on a batch), the evaluation transform and channel statistics."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from contrastkit.augment.ops import (
    _per_sample, adjust_brightness_, adjust_contrast_, adjust_hue_, adjust_saturation_, erase_, gaussian_blur,
    resized_crop, solarize_, to_grayscale,
)
from contrastkit.augment.params import ViewParams, sample_params
from contrastkit.augment.recipe import AugmentConfig, _is_int
from contrastkit.errors import ConfigError, DataError


def _check_stats(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate normalisation statistics and return them as tuples of floats."""
    try:
        m = tuple(float(v) for v in mean)
        s = tuple(float(v) for v in std)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"normalisation mean and std must be sequences of numbers: {err}") from None
    if len(m) == 0 or len(m) != len(s):
        raise ConfigError(
            "normalisation mean and std need one value per channel, "
            f"got {len(m)} means and {len(s)} stds"
        )
    if not all(math.isfinite(v) for v in m) or not all(math.isfinite(v) and v > 0 for v in s):
        raise ConfigError(f"normalisation mean must be finite and std > 0, got mean {m} and std {s}")
    return m, s


def _describe(images: object) -> str:
    """Dtype and shape of a tensor, or the type name of anything else, for error messages."""
    if isinstance(images, torch.Tensor):
        return f"{images.dtype} with shape {tuple(images.shape)}"
    return type(images).__name__


def _check_images(images: torch.Tensor, channels: int) -> None:
    """Raise DataError unless ``images`` is uint8 (B, channels, H, W)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise DataError(f"augment: images must be a uint8 tensor B x C x H x W, got {_describe(images)}")
    if images.shape[1] != channels:
        raise DataError(
            f"augment: images have {images.shape[1]} channels but the normalisation "
            f"mean/std have {channels} values"
        )
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise DataError(f"augment: images have an empty side, shape {tuple(images.shape)}")


def _normalize_(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std per channel of float images (B, C, H, W); in place.

    Python scalars per channel, not a tensor built from a list: that would be
    a host-to-device copy, which waits for the GPU, on every call.
    """
    for c, (m, s) in enumerate(zip(mean, std)):
        x[:, c].sub_(m).div_(s)
    return x


class ViewAugment:
    """Random views of uint8 batches, on the batch's device.

    Example:
        >>> aug = ViewAugment(default_recipe(1, 28), mean=[0.286], std=[0.353])
        >>> g = torch.Generator().manual_seed(0)
        >>> v1, v2 = aug(batch, g), aug(batch, g)  # two views of the same images
    """

    def __init__(self, cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        """Create the augmentation.

        Args:
            cfg: the view distribution.
            mean: per-channel mean in [0, 1] units (see :func:`channel_stats`).
            std: per-channel std in [0, 1] units, each > 0.
        """
        if not isinstance(cfg, AugmentConfig):
            raise ConfigError(f"ViewAugment needs an AugmentConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.mean, self.std = _check_stats(mean, std)

    def __repr__(self) -> str:
        return f"ViewAugment({self.cfg!r}, mean={list(self.mean)}, std={list(self.std)})"

    def params(self, images: torch.Tensor, generator: torch.Generator) -> ViewParams:
        """Draw per-sample parameters for a uint8 batch (B, C, H, W)."""
        _check_images(images, len(self.mean))
        if generator.device.type != images.device.type:
            raise ConfigError(
                f"augment: the generator is on {generator.device} but the images are on "
                f"{images.device}; create the generator with torch.Generator(device=images.device)"
            )
        bsz, _, height, width = images.shape
        return sample_params(self.cfg, bsz, height, width, generator, images.device)

    def apply(self, images: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """Apply given parameters: uint8 (B, C, H, W) -> float32 (B, C, S, S) in [0, 1], unnormalised."""
        _check_images(images, len(self.mean))
        if params.crop_w.shape != images.shape[:1]:
            raise ConfigError(
                f"augment: parameters for {params.crop_w.shape[0]} views given "
                f"for {images.shape[0]} images"
            )
        cfg, chans = self.cfg, images.shape[1]
        x = resized_crop(images.to(torch.float32), params, cfg.size, scale=1 / 255)  # (B, C, S, S)
        x = x.clamp_(0, 1)  # rounding of the weights can leave the range by an ulp
        if cfg.jitter_p > 0:
            if cfg.brightness > 0:
                adjust_brightness_(x, params.brightness)
            if cfg.contrast > 0:
                adjust_contrast_(x, params.contrast)
            if chans == 3 and cfg.saturation > 0:
                adjust_saturation_(x, params.saturation)
            if chans == 3 and cfg.hue > 0:
                adjust_hue_(x, params.hue)
        if chans == 3 and cfg.grayscale_p > 0:
            torch.where(_per_sample(params.grayscale), to_grayscale(x), x, out=x)
        if cfg.blur_p > 0:
            blurred = gaussian_blur(x, params.blur_sigma, cfg.blur_kernel_size)
            torch.where(_per_sample(params.blur), blurred, x, out=x)
        if cfg.solarize_p > 0:
            solarize_(x, params.solarize, cfg.solarize_threshold)
        if cfg.erase_p > 0 and params.erase is not None:
            erase_(x, params.erase, params.erase_box, self.mean)
        return x

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random view of every image.

        Args:
            images: uint8 (B, C, H, W) on any device.
            generator: a generator on the same device; its state advances.

        Returns:
            Normalised float32 views (B, C, size, size) on the images' device.
        """
        params = self.params(images, generator)
        return _normalize_(self.apply(images, params), self.mean, self.std)


def to_float(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], size: int | None = None
) -> torch.Tensor:
    """Deterministic evaluation transform: uint8 -> normalised float32.

    With ``size``, the shorter side is resized to ``size`` (bilinear,
    antialiased) and the centre ``size`` x ``size`` square is kept, as the
    usual Resize + CenterCrop evaluation transform; square images are simply
    resized.

    Args:
        images: uint8 (B, C, H, W).
        mean: per-channel mean in [0, 1] units.
        std: per-channel std in [0, 1] units.
        size: output side, or None to keep the input size.

    Returns:
        Float32 (B, C, H, W), or (B, C, size, size) when ``size`` is given.
    """
    m, s = _check_stats(mean, std)
    _check_images(images, len(m))
    if size is not None and (not _is_int(size) or size < 1):
        raise ConfigError(f"to_float: size must be an integer >= 1 or None, got {size!r}")
    size = None if size is None else int(size)
    x = images.to(torch.float32) / 255
    _, _, height, width = x.shape
    if size is not None and (height, width) != (size, size) and x.shape[0] > 0:
        short, long = min(height, width), max(height, width)
        new_long = max(size, int(size * long / short))
        new_hw = (size, new_long) if height <= width else (new_long, size)
        x = F.interpolate(x, size=new_hw, mode="bilinear", align_corners=False, antialias=True)
        top = int(round((new_hw[0] - size) / 2))
        left = int(round((new_hw[1] - size) / 2))
        x = x[:, :, top : top + size, left : left + size].clamp(0, 1)
    elif size is not None and (height, width) != (size, size):
        x = x.new_zeros((0, x.shape[1], size, size))
    return _normalize_(x, m, s)


def channel_stats(images: torch.Tensor, chunk: int = 1 << 22) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (population, ddof 0) in [0, 1] units.

    Sums are exact integers accumulated over chunks of about ``chunk``
    pixels, so no float copy of the whole set is made and the result does
    not depend on the chunking.

    Args:
        images: uint8 (N, C, H, W), N >= 1.
        chunk: approximate number of pixel values per chunk.

    Returns:
        (mean, std), one float per channel each.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise DataError(
            f"channel_stats: images must be a uint8 tensor N x C x H x W, got {_describe(images)}"
        )
    n, chans, height, width = images.shape
    if n == 0 or height == 0 or width == 0:
        raise DataError(
            f"channel_stats: need at least one non-empty image, got shape {tuple(images.shape)}"
        )
    per_image = chans * height * width
    step = max(1, chunk // per_image)
    total = torch.zeros(chans, dtype=torch.int64, device=images.device)
    total_sq = torch.zeros(chans, dtype=torch.int64, device=images.device)
    for start in range(0, n, step):
        part = images[start : start + step].to(torch.int32)  # (n', C, H, W); 255^2 fits
        total += part.sum(dim=(0, 2, 3), dtype=torch.int64)
        total_sq += (part * part).sum(dim=(0, 2, 3), dtype=torch.int64)
    count = n * height * width
    means, stds = [], []
    for s1, s2 in zip(total.tolist(), total_sq.tolist()):
        var = (s2 * count - s1 * s1) / (count * count)  # exact integers, one rounding
        means.append(s1 / count / 255)
        stds.append(math.sqrt(max(var, 0.0)) / 255)
    return means, stds
