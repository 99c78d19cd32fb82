"""The view recipe: AugmentConfig (every probability and range, checked) and the default per image type."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


from contrastkit.errors import ConfigError


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
