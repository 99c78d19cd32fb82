"""Vectorised pixel operations of the views: crop and flip resampling, colour jitter, blur, solarize, erasing."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from contrastkit.augment.params import ViewParams


# ITU-R BT.601 luma weights (also PIL's convert("L")), for R, G, B.
GRAY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


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
