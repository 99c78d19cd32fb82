"""Per-sample random parameters of a batch of views: one uniform draw per sample, columns fixed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from contrastkit.augment.recipe import AugmentConfig


# Columns of the one uniform draw per sample (see sample_params). The draw
# always has all columns, so the random stream of one operation does not
# depend on whether another operation is switched on.
_AREA, _LOG_RATIO, _CX, _CY, _FLIP = 0, 1, 2, 3, 4
_JITTER, _BRIGHT, _CONTRAST, _SAT, _HUE = 5, 6, 7, 8, 9
_GRAY, _BLUR, _SIGMA, _SOLAR = 10, 11, 12, 13
_NUM_DRAWS = 14


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
