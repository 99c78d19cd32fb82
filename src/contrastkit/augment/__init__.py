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

Modules: :mod:`.recipe` (AugmentConfig, default_recipe), :mod:`.params`
(the per-sample draws), :mod:`.ops` (the pixel operations), :mod:`.views`
(ViewAugment, to_float, channel_stats); this package re-exports them.
"""

from contrastkit.augment.ops import (
    GRAY_WEIGHTS, adjust_brightness_, adjust_contrast_, adjust_hue_, adjust_saturation_, erase_, gaussian_blur,
    resized_crop, solarize_, to_grayscale,
)
from contrastkit.augment.params import ViewParams, sample_params
from contrastkit.augment.recipe import AugmentConfig, default_recipe
from contrastkit.augment.views import ViewAugment, channel_stats, to_float

__all__ = [
    "GRAY_WEIGHTS", "AugmentConfig", "ViewAugment", "ViewParams", "adjust_brightness_", "adjust_contrast_",
    "adjust_hue_", "adjust_saturation_", "channel_stats", "default_recipe", "erase_", "gaussian_blur",
    "resized_crop", "sample_params", "solarize_", "to_float", "to_grayscale",
]
