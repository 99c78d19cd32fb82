"""Batched, on-device view generation for contrastive learning.

A view is made from a uint8 batch ``(B, C, H, W)`` that already sits on the
model's device. Every random parameter is drawn per sample, in one call, from
a ``torch.Generator`` on that device, and every operation is vectorised over
the batch: no per-image Python loop, no PIL, no torchvision. The same
generator state always gives the same views.

The pipeline follows SimCLR (arXiv:2002.05709, Appendix A) in a fixed order:

1. random resized crop + horizontal flip (one separable resampling),
2. colour jitter with probability ``jitter_p``: brightness, contrast,
   saturation, hue, in this fixed order (torchvision's ``ColorJitter`` draws
   a random order per call; the four operations do not commute exactly, so
   the view distribution differs slightly),
3. random grayscale (RGB only),
4. Gaussian blur (SimCLR's ImageNet recipe),
5. solarize (BYOL, arXiv:2006.07733, Table 6),
6. random erasing (Zhong et al. 2020, arXiv:1708.04896; torchvision's
   ``RandomErasing`` after ``Normalize`` with ``value=0``): a rectangle of
   the view is set to the channel mean,
7. normalisation with per-channel mean and std.

Saturation, hue and grayscale need RGB and are applied only when ``C == 3``;
brightness, contrast, blur and solarize work for any channel count.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from contrastkit.errors import ConfigError, DataError

# ITU-R BT.601 luma weights (also PIL's convert("L")), for R, G, B.
GRAY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)

# Columns of the one uniform draw per sample (see sample_params). The draw
# always has all columns, so the random stream of one operation does not
# depend on whether another operation is switched on.
_AREA, _LOG_RATIO, _CX, _CY, _FLIP = 0, 1, 2, 3, 4
_JITTER, _BRIGHT, _CONTRAST, _SAT, _HUE = 5, 6, 7, 8, 9
_GRAY, _BLUR, _SIGMA, _SOLAR = 10, 11, 12, 13
_NUM_DRAWS = 14


def _is_int(value: object) -> bool:
    """True for Python and NumPy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class AugmentConfig:
    """Hyper-parameters of one view distribution.

    Attributes:
        size: output side in pixels (views are square).
        crop_scale: range of the crop's area as a fraction of the image area.
        crop_ratio: range of the crop's width / height, sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter_p: probability that colour jitter is applied to a sample.
        brightness: brightness factor drawn from [max(0, 1 - b), 1 + b].
        contrast: contrast factor drawn from [max(0, 1 - c), 1 + c].
        saturation: saturation factor drawn from [max(0, 1 - s), 1 + s] (RGB only).
        hue: hue shift drawn from [-h, h], in turns of the colour wheel (RGB only).
        grayscale_p: probability of converting to grayscale (RGB only).
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation, in output pixels.
        solarize_p: probability of solarizing.
        solarize_threshold: pixels >= this value (in [0, 1]) are inverted.
        erase_p: probability of random erasing (0 = off).
        erase_scale: range of the erased rectangle's area, as a fraction of the view.
        erase_ratio: range of its width / height, sampled log-uniformly.
    """

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    erase_p: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)  # torchvision RandomErasing's defaults
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        if not _is_int(self.size) or self.size < 1:
            raise ConfigError(f"augment.size must be an integer >= 1 (pixels), got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        for name in ("crop_scale", "crop_ratio", "blur_sigma", "erase_scale", "erase_ratio"):
            value = getattr(self, name)
            try:
                pair = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                pair = ()
            if len(pair) != 2:
                raise ConfigError(f"augment.{name} must be a pair (lo, hi), got {value!r}")
            object.__setattr__(self, name, pair)  # lists from JSON become tuples
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(
                "augment.crop_scale must satisfy 0 < lo <= hi <= 1 (area fraction), "
                f"got {self.crop_scale}"
            )
        lo, hi = self.crop_ratio
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(
                f"augment.crop_ratio must satisfy 0 < lo <= hi (width / height), got {self.crop_ratio}"
            )
        lo, hi = self.blur_sigma
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(
                f"augment.blur_sigma must satisfy 0 < lo <= hi (pixels), got {self.blur_sigma}"
            )
        lo, hi = self.erase_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(
                f"augment.erase_scale must satisfy 0 < lo <= hi <= 1 (area fraction), got {self.erase_scale}"
            )
        lo, hi = self.erase_ratio
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(
                f"augment.erase_ratio must satisfy 0 < lo <= hi (width / height), got {self.erase_ratio}"
            )
        for name in (
            "flip_p", "jitter_p", "brightness", "contrast", "saturation", "hue",
            "grayscale_p", "blur_p", "solarize_p", "solarize_threshold", "erase_p",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"augment.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "solarize_threshold", "erase_p"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"augment.{name} must be in [0, 1], got {value!r}")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not (0 <= value and math.isfinite(value)):
                raise ConfigError(f"augment.{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(
                f"augment.hue must be in [0, 0.5] (turns of the colour wheel), got {self.hue!r}"
            )

    @property
    def blur_kernel_size(self) -> int:
        """Odd blur kernel side, about 10% of ``size`` (SimCLR), at least 3."""
        k = int(0.1 * self.size)
        return max(3, k if k % 2 == 1 else k + 1)


def default_recipe(channels: int, size: int) -> AugmentConfig:
    """Default view distribution for images of ``channels`` and output ``size``.

    Args:
        channels: image channels; 3 is RGB, any other count gets the
            intensity-only recipe of grayscale images.
        size: output side in pixels.

    Returns:
        The recipe: Fashion-MNIST-like for one channel, SimCLR's CIFAR recipe
        for RGB up to 64 px, SimCLR's ImageNet recipe with BYOL's solarize
        above 64 px.
    """
    if not _is_int(channels) or channels < 1:
        raise ConfigError(f"channels must be an integer >= 1, got {channels!r}")
    if not _is_int(size) or size < 1:
        raise ConfigError(f"augment.size must be an integer >= 1 (pixels), got {size!r}")
    if channels != 3:
        return AugmentConfig(
            size=size,
            # Area fraction. Mild crops: on centred small objects (garments,
            # digits) a crop that cuts away a sleeve or a hem teaches
            # invariance to what tells the classes apart. Measured on the full
            # Fashion-MNIST (bench/recipe_sweep.py, BENCHMARKS.md "Recipe
            # search"): kNN after 3 epochs rises from 84.5% at 0.5 to 85.7%
            # at 0.8; on the embedded subset 0.5 had beaten 0.2 and 0.08.
            crop_scale=(0.8, 1.0),
            crop_ratio=(3 / 4, 4 / 3),  # width / height, torchvision default
            flip_p=0.5,  # garments are left-right symmetric enough
            jitter_p=0.8,  # SimCLR's probability of colour distortion
            # Strong intensity jitter makes the task hard where it does not
            # hurt: a garment's class does not depend on its grey level.
            # Factor in [0.2, 1.8] (SimCLR strength 1.0); 0.8 beat 0.4 by
            # 1.4 points of kNN after 3 epochs (same benchmark).
            brightness=0.8,
            contrast=0.8,
            saturation=0.0,  # unused without colour
            hue=0.0,  # unused without colour
            grayscale_p=0.0,  # already gray
            # Blur helps on large images only (SimCLR skips it on CIFAR).
            blur_p=0.5 if size > 64 else 0.0,
            solarize_p=0.0,
            # Random erasing (torchvision's defaults: p 0.5, area 0.02-0.33):
            # hiding a part of the garment makes the two views agree on the
            # rest of it. +1.2 points of validation kNN after 3 epochs on the
            # full Fashion-MNIST (85.4 / 86.7 / 87.4% against 84.0 / 85.5 /
            # 86.3%; p 1.0 and area 0.02-0.15 or 0.1-0.4 within 0.3 of it;
            # BENCHMARKS.md "Random erasing").
            erase_p=0.5,
        )
    if size <= 64:
        # SimCLR CIFAR-10 (arXiv:2002.05709, Appendix B.9): colour strength 0.5.
        return AugmentConfig(
            size=size,
            crop_scale=(0.08, 1.0),  # area fraction, Inception-style crop
            crop_ratio=(3 / 4, 4 / 3),  # width / height
            flip_p=0.5,
            jitter_p=0.8,
            brightness=0.4,  # 0.8 * strength 0.5
            contrast=0.4,  # 0.8 * strength 0.5
            saturation=0.4,  # 0.8 * strength 0.5
            hue=0.1,  # 0.2 * strength 0.5, turns of the colour wheel
            grayscale_p=0.2,
            blur_p=0.0,  # SimCLR: no blur on 32 px images
            solarize_p=0.0,
        )
    # SimCLR ImageNet (arXiv:2002.05709, Appendix A): colour strength 1.0,
    # blur with p 0.5, sigma in [0.1, 2.0] px, kernel 10% of the side; plus
    # BYOL's solarize with p 0.2 (arXiv:2006.07733, Table 6).
    return AugmentConfig(
        size=size,
        crop_scale=(0.08, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip_p=0.5,
        jitter_p=0.8,
        brightness=0.8,  # 0.8 * strength 1.0
        contrast=0.8,
        saturation=0.8,
        hue=0.2,  # 0.2 * strength 1.0
        grayscale_p=0.2,
        blur_p=0.5,
        blur_sigma=(0.1, 2.0),
        solarize_p=0.2,
        solarize_threshold=0.5,
    )


@dataclass(frozen=True)
class ViewParams:
    """Per-sample random parameters of one batch of views; every field has shape (B,).

    Attributes:
        crop_w: crop width as a fraction of the image width, in (0, 1].
        crop_h: crop height as a fraction of the image height, in (0, 1].
        center_x: crop centre, normalised x in [-1, 1] (image edges at -1 and 1).
        center_y: crop centre, normalised y in [-1, 1].
        flip: whether the view is mirrored horizontally.
        brightness: brightness factor (1 where jitter is not applied).
        contrast: contrast factor (1 where jitter is not applied).
        saturation: saturation factor (1 where jitter is not applied).
        hue: hue shift in turns (0 where jitter is not applied).
        grayscale: whether the view is converted to grayscale.
        blur: whether the view is blurred.
        blur_sigma: blur standard deviation in output pixels (drawn for all samples).
        solarize: whether the view is solarized.
        erase: whether a rectangle of the view is erased; None when erasing is off.
        erase_box: (B, 4) the rectangle (x0, y0, x1, y1) as fractions of the view's side; None when off.
    """

    crop_w: torch.Tensor
    crop_h: torch.Tensor
    center_x: torch.Tensor
    center_y: torch.Tensor
    flip: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    blur_sigma: torch.Tensor
    solarize: torch.Tensor
    erase: torch.Tensor | None = None
    erase_box: torch.Tensor | None = None


def _uniform(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map uniform [0, 1) draws to [lo, hi)."""
    return lo + (hi - lo) * u


def sample_params(
    cfg: AugmentConfig,
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> ViewParams:
    """Draw the parameters of ``batch`` views of ``height`` x ``width`` images.

    All draws are one ``torch.rand((batch, 14))`` call on ``device`` (which
    must be the generator's device), so equal generator states give equal
    parameters.

    The crop follows torchvision's ``RandomResizedCrop``: the area fraction is
    uniform in ``crop_scale`` and log(width / height) is uniform in
    log(``crop_ratio``). Instead of its 10-attempt rejection loop, a crop
    side longer than the image is clamped to the image and the other side is
    lengthened to keep the area (so the area distribution is exact and the
    aspect ratio moves towards the image's). Crops are continuous: sizes and
    offsets are not rounded to whole pixels. The centre is uniform over the
    positions that keep the crop inside the image.

    Args:
        cfg: the view distribution.
        batch: number of views B.
        height: input image height H in pixels.
        width: input image width W in pixels.
        generator: source of randomness.
        device: where to draw; defaults to the generator's device.

    Returns:
        The parameters, each a tensor of shape (B,) on ``device``.
    """
    device = generator.device if device is None else torch.device(device)
    u = torch.rand((batch, _NUM_DRAWS), generator=generator, device=device)  # (B, 14)

    area = _uniform(u[:, _AREA], *cfg.crop_scale) * (height * width)  # px^2
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(_uniform(u[:, _LOG_RATIO], log_lo, log_hi))
    w = torch.sqrt(area * ratio).clamp(max=width)  # px
    h = (area / w).clamp(max=height)
    w = (area / h).clamp(max=width)
    crop_w, crop_h = w / width, h / height
    center_x = (2 * u[:, _CX] - 1) * (1 - crop_w)
    center_y = (2 * u[:, _CY] - 1) * (1 - crop_h)

    jitter = u[:, _JITTER] < cfg.jitter_p
    ones = torch.ones_like(area)
    erase = erase_box = None
    if cfg.erase_p > 0:  # drawn only when on, so recipes without erasing keep their random stream
        erase, erase_box = _erase_params(cfg, torch.rand((batch, 5), generator=generator, device=device))

    def factor(col: int, strength: float) -> torch.Tensor:
        return torch.where(jitter, _uniform(u[:, col], max(0.0, 1 - strength), 1 + strength), ones)

    return ViewParams(
        crop_w=crop_w,
        crop_h=crop_h,
        center_x=center_x,
        center_y=center_y,
        flip=u[:, _FLIP] < cfg.flip_p,
        brightness=factor(_BRIGHT, cfg.brightness),
        contrast=factor(_CONTRAST, cfg.contrast),
        saturation=factor(_SAT, cfg.saturation),
        hue=torch.where(jitter, _uniform(u[:, _HUE], -cfg.hue, cfg.hue), torch.zeros_like(area)),
        grayscale=u[:, _GRAY] < cfg.grayscale_p,
        blur=u[:, _BLUR] < cfg.blur_p,
        blur_sigma=_uniform(u[:, _SIGMA], *cfg.blur_sigma),
        solarize=u[:, _SOLAR] < cfg.solarize_p,
        erase=erase,
        erase_box=erase_box,
    )


def _erase_params(cfg: AugmentConfig, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(erase (B,) bool, box (B, 4)) of random erasing from uniform draws ``u`` (B, 5) on a square view.

    Area fraction uniform in ``erase_scale``, log(width / height) uniform in
    log(``erase_ratio``), sides clamped to the view, position uniform over
    the places that keep the rectangle inside (torchvision's ``RandomErasing``
    without its rejection loop, in continuous coordinates).
    """
    area = _uniform(u[:, 0], *cfg.erase_scale)
    ratio = torch.exp(_uniform(u[:, 1], math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1])))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = (area / w).clamp(max=1.0)
    x0 = u[:, 2] * (1 - w)
    y0 = u[:, 3] * (1 - h)
    erase = u[:, 4] < cfg.erase_p
    return erase, torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def erase_(x: torch.Tensor, erase: torch.Tensor, box: torch.Tensor, fill: Sequence[float]) -> torch.Tensor:
    """Set the pixels whose centres fall in ``box`` (fractions of the side) to ``fill`` per channel, in place.

    Args:
        x: float (B, C, S, S) views in [0, 1].
        erase: (B,) bool, which views are erased.
        box: (B, 4) rectangles (x0, y0, x1, y1) in [0, 1].
        fill: per-channel value (the channel mean: 0 after normalisation).
    """
    size = x.shape[-1]
    centres = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size  # (S,)
    in_x = (centres[None] >= box[:, 0:1]) & (centres[None] < box[:, 2:3])  # (B, S)
    in_y = (centres[None] >= box[:, 1:2]) & (centres[None] < box[:, 3:4])  # (B, S)
    mask = (in_y[:, :, None] & in_x[:, None, :] & erase[:, None, None])[:, None]  # (B, 1, S, S)
    value = torch.tensor(list(fill), device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return torch.where(mask, value, x, out=x)


def _resample_matrix(
    center: torch.Tensor, half: torch.Tensor, in_size: int, out_size: int
) -> torch.Tensor:
    """Per-sample 1-D resampling weights of a crop.

    Output pixel j samples normalised coordinate ``center + half * x_j`` where
    x_j = (2j + 1) / out_size - 1 (``align_corners=False``); ``half < 0``
    mirrors. Weights are bilinear (triangle filter) with border clamping, as
    ``F.grid_sample(..., padding_mode="border")``. When the crop is shrunk
    (more than one input pixel per output pixel) the triangle is widened by
    that factor and renormalised: the antialiased bilinear filter of PIL and
    ``F.interpolate(..., antialias=True)``.

    Args:
        center: crop centres, shape (B,), normalised coordinates.
        half: signed crop half-extents, shape (B,), normalised units.
        in_size: input side in pixels.
        out_size: output side in pixels.

    Returns:
        Weights of shape (B, out_size, in_size); each row sums to 1.
    """
    dev = center.device
    x_out = (2 * torch.arange(out_size, device=dev, dtype=torch.float32) + 1) / out_size - 1  # (S,)
    x_in = center[:, None] + half[:, None] * x_out  # (B, S), normalised
    u = (((x_in + 1) * in_size - 1) / 2).clamp(0, in_size - 1)  # (B, S), input pixel index
    support = (half.abs() * in_size / out_size).clamp(min=1)  # (B,), input px per output px
    pix = torch.arange(in_size, device=dev, dtype=torch.float32)  # (in,)
    # Triangle weights max(0, 1 - |u - i| / support), in place: one (B, S, in) tensor.
    weights = torch.sub(u[:, :, None], pix)  # (B, S, in)
    weights.abs_().div_(support[:, None, None]).neg_().add_(1).clamp_(min=0)
    return weights.div_(weights.sum(dim=-1, keepdim=True))


def resized_crop(x: torch.Tensor, params: ViewParams, size: int, scale: float = 1.0) -> torch.Tensor:
    """Crop, flip and resize every image of a batch with its own parameters.

    Equivalent to ``F.affine_grid`` + ``F.grid_sample`` (bilinear,
    ``align_corners=False``, ``padding_mode="border"``) with a per-sample
    scale and translation, but computed as two batched matrix products
    (columns, then rows), which is faster on CPU and antialiases crops that
    are shrunk.

    Args:
        x: float images (B, C, H, W).
        params: per-sample crop and flip parameters.
        size: output side S.
        scale: constant multiplied into the result (e.g. 1 / 255), for free.

    Returns:
        Float images (B, C, S, S).
    """
    bsz, chans, height, width = x.shape
    half_x = torch.where(params.flip, -params.crop_w, params.crop_w)  # (B,)
    rows = _resample_matrix(params.center_y, params.crop_h, height, size).mul_(scale)  # (B, S, H)
    cols = _resample_matrix(params.center_x, half_x, width, size)  # (B, S, W)
    # Columns first with the channels folded into the rows of one batched
    # product, then rows; faster on CPU than grid_sample or B * C small products.
    y = torch.bmm(x.reshape(bsz, chans * height, width), cols.transpose(1, 2))  # (B, C*H, S)
    return rows.unsqueeze(1) @ y.view(bsz, chans, height, size)  # (B, C, S, S)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast over images."""
    return v.view(-1, 1, 1, 1)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB images (B, 3, H, W) -> (B, 1, H, W)."""
    wr, wg, wb = GRAY_WEIGHTS
    gray = x[:, 0:1] * wr  # (B, 1, H, W)
    return gray.add_(x[:, 1:2], alpha=wg).add_(x[:, 2:3], alpha=wb)


def _mean_intensity(x: torch.Tensor) -> torch.Tensor:
    """Mean gray level per image (B, 1, 1, 1): of the 601 luma for RGB, else of all channels."""
    channel_means = x.mean(dim=(2, 3))  # (B, C)
    if x.shape[1] == 3:
        wr, wg, wb = GRAY_WEIGHTS  # mean of luma = luma of means
        luma = channel_means[:, 0] * wr + channel_means[:, 1] * wg + channel_means[:, 2] * wb
        return luma.view(-1, 1, 1, 1)
    return channel_means.mean(dim=1).view(-1, 1, 1, 1)


# The colour operations below work in place on float images in [0, 1] of
# shape (B, C, H, W) and return their argument, as torch's ``mul_``: on CPU a
# fresh image-sized tensor costs more in page faults than the arithmetic.
# Pass ``x.clone()`` to keep the input.


def adjust_brightness_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply each image by its factor (B,), clamp to [0, 1]; in place."""
    return x.mul_(_per_sample(factor)).clamp_(0, 1)


def adjust_contrast_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its mean gray level, ``f * x + (1 - f) * mean``, clamp; in place."""
    f = _per_sample(factor)
    offset = (1 - f) * _mean_intensity(x)  # (B, 1, 1, 1), before x changes
    return x.mul_(f).add_(offset).clamp_(0, 1)


def adjust_saturation_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend RGB images with their grayscale, ``f * x + (1 - f) * gray``, clamp; in place."""
    f = _per_sample(factor)
    gray = to_grayscale(x).mul_(1 - f)  # (B, 1, H, W)
    return x.mul_(f).add_(gray).clamp_(0, 1)


def adjust_hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images by ``shift`` (B,) turns; in place.

    Exact RGB -> HSV -> RGB (as torchvision's ``adjust_hue``), written so that
    value and saturation, hence max and chroma, stay in the pixel: channel n
    of the result is ``max - chroma * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n' + 6 * hue) mod 6`` and n' = 5, 3, 1 for R, G, B.
    """
    r, g, b = x.unbind(dim=1)  # each (B, H, W)
    maxc = x.amax(dim=1)  # (B, H, W)
    chroma = x.amin(dim=1).neg_().add_(maxc)  # max - min
    is_r = maxc == r
    is_g = (maxc == g).logical_and_(~is_r)
    # Hue in sixths of a turn, (r - g) / c + 4 where blue is the max, (b - r) / c + 2
    # where green is, (g - b) / c where red is; gray pixels (c = 0) give 0 / 0 -> 0.
    hue6 = torch.sub(r, g).add_(chroma, alpha=4)
    torch.where(is_g, torch.sub(b, r).add_(chroma, alpha=2), hue6, out=hue6)
    torch.where(is_r, g - b, hue6, out=hue6)
    hue6.div_(chroma).nan_to_num_(0.0).add_(6 * shift.view(-1, 1, 1))
    ramp = torch.empty_like(hue6)
    for c, offset in enumerate((5.0, 3.0, 1.0)):  # R, G, B; one pass per channel
        # min(k, 4 - k) = 2 - |k - 2| for k in [0, 6)
        torch.add(hue6, offset, out=ramp).remainder_(6).sub_(2).abs_().neg_().add_(2).clamp_(0, 1)
        x[:, c].copy_(maxc).addcmul_(chroma, ramp, value=-1)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image with its own Gaussian, separably, with reflect padding.

    As torchvision's ``GaussianBlur``: taps at integer offsets
    ``-k//2 .. k//2``, weights ``exp(-t^2 / (2 sigma^2))`` normalised to sum 1.

    Args:
        x: float images (B, C, H, W).
        sigma: standard deviation per sample (B,), in pixels, > 0.
        kernel_size: odd number of taps k.

    Returns:
        Blurred images (B, C, H, W).
    """
    bsz, chans, height, width = x.shape
    if x.numel() == 0:
        return x.clone()
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)  # (k,)
    kernel = torch.exp(-0.5 * (t / sigma[:, None]) ** 2)  # (B, k)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(chans, dim=0)  # (B*C, k), one per (image, channel)
    y = x.reshape(1, bsz * chans, height, width)  # groups = B*C
    # Reflect needs the pad shorter than the side; tiny images replicate instead.
    mode_w = "reflect" if half < width else "replicate"
    mode_h = "reflect" if half < height else "replicate"
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode=mode_w), kernel[:, None, None, :], groups=bsz * chans)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode=mode_h), kernel[:, None, :, None], groups=bsz * chans)
    return y.view(bsz, chans, height, width)


def solarize_(x: torch.Tensor, chosen: torch.Tensor, threshold: float) -> torch.Tensor:
    """Where ``chosen`` (B,) is true, invert pixels ``>= threshold`` (``x -> 1 - x``); in place."""
    invert = _per_sample(chosen) & (x >= threshold)  # (B, C, H, W)
    return torch.where(invert, 1 - x, x, out=x)


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
