"""Image encoders ("backbones") and the registry that builds them by name.

Every backbone maps float images ``(B, C, H, W)`` with any ``C >= 1`` and any
``H, W >= 8`` to features ``(B, embed_dim)`` through global pooling, and has
an ``embed_dim`` attribute. Nothing here picks a device: a backbone runs on
whatever device its parameters are moved to, in fp32, under
``torch.autocast(..., dtype=torch.bfloat16)`` and in channels_last memory
format.

Registered names (see :data:`BACKBONES`):

- ``seed_cnn``: the classic two-conv CNN of the seed design (embed 1024).
- ``small_cnn``: a small, fast ResNet-9-style CNN, the CPU default for
  28-32 px images (embed 256).
- ``resnet18``, ``resnet34``, ``resnet50``: CIFAR-style ResNets (He et al.
  2015, arXiv:1512.03385, Sec. 4.2: 3x3 stride-1 stem, no max-pool),
  embed 512, 512 and 2048.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from contrastkit.errors import ConfigError, DataError

MIN_IMAGE_SIZE = 8  # pixels; the smallest height and width every backbone accepts


class Backbone(nn.Module):
    """What every backbone shares: input checks, ``embed_dim`` and ``in_channels``.

    Subclasses build their layers in ``__init__`` and implement
    :meth:`features`; :meth:`forward` checks the input first so that a wrong
    image shape fails with a message that names the backbone and the problem.

    Attributes:
        name: the registry name, used in error messages.
        in_channels: number of image channels the first conv expects.
        embed_dim: length of the feature vector ``forward`` returns.
    """

    uses_batch_norm: bool = True

    def __init__(self, in_channels: int, embed_dim: int, name: str) -> None:
        super().__init__()
        _check_positive_int(f"{name}: in_channels", in_channels)
        self.name = name
        self.in_channels = in_channels
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch of images.

        Args:
            x: float images (B, in_channels, H, W) with H, W >= 8, normalised.

        Returns:
            Features (B, embed_dim).

        Raises:
            DataError: the images have the wrong rank, dtype, channel count or
                are smaller than 8 x 8.
            ConfigError: a batch of one image in training mode (batch norm
                needs at least two).
        """
        self._check_input(x)
        return self.features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Map checked images (B, C, H, W) to features (B, embed_dim)."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or not x.is_floating_point():
            raise DataError(
                f"{self.name}: expected float images of shape (B, C, H, W), "
                f"got {x.dtype} with shape {tuple(x.shape)}"
            )
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise DataError(
                f"{self.name}: built for {self.in_channels} image channel(s), "
                f"got images with {c} channel(s) (shape {tuple(x.shape)})"
            )
        if h < MIN_IMAGE_SIZE or w < MIN_IMAGE_SIZE:
            raise DataError(
                f"{self.name}: images must be at least {MIN_IMAGE_SIZE} x "
                f"{MIN_IMAGE_SIZE} pixels, got {h} x {w}"
            )
        if self.uses_batch_norm and self.training and b < 2:
            raise ConfigError(
                f"{self.name}: batch norm needs at least 2 images per batch in "
                f"training mode, got {b}; use batch_size >= 2 and drop the last "
                f"incomplete batch (or call .eval() to embed single images)"
            )


def _check_positive_int(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")


def _init_weights(module: nn.Module, zero_init_last_bn: bool = False) -> None:
    """Kaiming-normal init for convs (fan_out, ReLU), BN gamma 1 and beta 0.

    Args:
        module: the network to initialise in place.
        zero_init_last_bn: set gamma to 0 in every BN marked ``is_last_bn``
            (the last BN of a residual branch), so each block starts as the
            identity (Goyal et al. 2017, arXiv:1706.02677, Sec. 5.1).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_last_bn:
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d) and getattr(m, "is_last_bn", False):
                nn.init.zeros_(m.weight)


def _last_bn(channels: int) -> nn.BatchNorm2d:
    """A BatchNorm2d marked as the last of a residual branch (for zero-init)."""
    bn = nn.BatchNorm2d(channels)
    bn.is_last_bn = True  # type: ignore[attr-defined]
    return bn


# --------------------------------------------------------------------------
# seed_cnn
# --------------------------------------------------------------------------


class SeedCNN(Backbone):
    """The classic CNN of the seed design: conv 64, conv 128, fc 1024.

    conv(k x k, 64) - ReLU - max-pool 2 - conv(k x k, 128) - ReLU - max-pool 2
    - adaptive average pool to 7 x 7 - fc 1024 - ReLU. The 1024-d output
    after the ReLU is the embedding. On 28 px input the adaptive pool is the
    identity, so this is exactly the classic 28 -> 14 -> 7 design; other sizes
    are pooled (or, below 28 px, repeated) to 7 x 7.

    Args:
        in_channels: number of image channels.
        kernel_size: conv kernel size, 5 (classic) or 3.
    """

    uses_batch_norm = False

    def __init__(self, in_channels: int, kernel_size: int = 5) -> None:
        super().__init__(in_channels, embed_dim=1024, name="seed_cnn")
        if kernel_size not in (3, 5):
            raise ConfigError(f"seed_cnn: kernel_size must be 3 or 5, got {kernel_size!r}")
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(64, 128, kernel_size, padding=pad)
        self.pool = nn.MaxPool2d(2)
        self.to_7x7 = nn.AdaptiveAvgPool2d((7, 7))
        self.fc = nn.Linear(128 * 7 * 7, 1024)
        self.relu = nn.ReLU(inplace=True)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, H, W) to features (B, 1024)."""
        x = self.pool(self.relu(self.conv1(x)))  # (B, 64, H/2, W/2)
        x = self.pool(self.relu(self.conv2(x)))  # (B, 128, H/4, W/4)
        x = self.to_7x7(x).flatten(1)  # (B, 128 * 7 * 7)
        return self.relu(self.fc(x))  # (B, 1024)


# --------------------------------------------------------------------------
# small_cnn
# --------------------------------------------------------------------------


def _conv_bn_relu(in_ch: int, out_ch: int, pool: bool) -> nn.Sequential:
    """conv 3x3 - [max-pool 2] - BN - ReLU (airbench order: BN after the pool)."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """x + (conv-BN-ReLU-conv-BN-ReLU)(x) at constant shape (ResNet-9's res block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            _conv_bn_relu(channels, channels, pool=False),
            _conv_bn_relu(channels, channels, pool=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class SmallCNN(Backbone):
    """A small fast CNN for 28-32 px images: ResNet-9 (Page 2018) scaled down.

    Layout for width ``w`` (resolution for 28 px input in brackets)::

        stem   conv w    - pool - BN - ReLU              (28 -> 14)
        layer1 conv 2w   - pool - BN - ReLU + res(2w)    (14 -> 7)
        layer2 conv 4w   - pool - BN - ReLU              (7 -> 3)
        layer3 conv 8w          - BN - ReLU + res(8w)    (3)
        global average pool -> 8w features

    Pooling right after the stem keeps every wide conv at 14 px or below,
    which is what makes it fast on a CPU (about 3x the images/s of the same
    net without the stem pool); the two residual blocks keep depth (7 convs)
    for capacity. BN sits after the pool as in airbench, so it runs on 4x
    fewer values.

    Args:
        in_channels: number of image channels.
        width: channels of the stem; the embedding has ``8 * width`` dims.
            32 (default) gives 256 dims and 1.64 M parameters; 64 gives 512.
    """

    def __init__(self, in_channels: int, width: int = 32) -> None:
        _check_positive_int("small_cnn: width", width)
        super().__init__(in_channels, embed_dim=8 * width, name="small_cnn")
        w = width
        self.stem = _conv_bn_relu(in_channels, w, pool=True)
        self.layer1 = nn.Sequential(_conv_bn_relu(w, 2 * w, pool=True), _Residual(2 * w))
        self.layer2 = _conv_bn_relu(2 * w, 4 * w, pool=True)
        self.layer3 = nn.Sequential(_conv_bn_relu(4 * w, 8 * w, pool=False), _Residual(8 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, H, W) to features (B, 8 * width)."""
        x = self.stem(x)  # (B, w, H/2, W/2)
        x = self.layer1(x)  # (B, 2w, H/4, W/4)
        x = self.layer2(x)  # (B, 4w, H/8, W/8)
        x = self.layer3(x)  # (B, 8w, H/8, W/8)
        return self.pool(x).flatten(1)  # (B, 8w)


# --------------------------------------------------------------------------
# CIFAR-style ResNets
# --------------------------------------------------------------------------


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 conv + BN projection when the shape changes (option B)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut (ResNet-18/34). Output channels: ``planes``."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _last_bn(planes)
        self.shortcut = _shortcut(in_ch, planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided) - 1x1 convs with a shortcut (ResNet-50).

    Output channels: ``4 * planes``. The stride is on the 3x3 conv
    (torchvision's "ResNet v1.5").
    """

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = _last_bn(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, planes, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, 4 * planes, H/s, W/s)
        return self.relu(out + self.shortcut(x))


class ResNet(Backbone):
    """CIFAR-style ResNet (He et al. 2015, arXiv:1512.03385).

    The CIFAR variant: a 3x3 stride-1 stem conv with 64 channels and no
    max-pool, then four stages of 64, 128, 256, 512 planes (strides 1, 2, 2, 2)
    and global average pooling. No final fc: the pooled features are the
    embedding (512 for BasicBlock, 2048 for Bottleneck).

    Args:
        in_channels: number of image channels.
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the four stages.
        name: registry name, used in error messages.
        zero_init_residual: start the last BN of every residual branch with
            gamma 0, so each block is the identity at initialisation.
    """

    def __init__(
        self,
        in_channels: int,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        name: str = "resnet",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(in_channels, embed_dim=512 * block.expansion, name=name)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_ch = 64
        for planes, n_blocks, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2)):
            blocks: list[nn.Module] = []
            for i in range(n_blocks):
                blocks.append(block(in_ch, planes, stride if i == 0 else 1))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        _init_weights(self, zero_init_last_bn=zero_init_residual)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, H, W) to features (B, embed_dim)."""
        x = self.stem(x)  # (B, 64, H, W)
        x = self.layer1(x)  # (B, 64 * e, H, W)
        x = self.layer2(x)  # (B, 128 * e, H/2, W/2)
        x = self.layer3(x)  # (B, 256 * e, H/4, W/4)
        x = self.layer4(x)  # (B, 512 * e, H/8, W/8)
        return self.pool(x).flatten(1)  # (B, 512 * e)


def resnet18(in_channels: int, zero_init_residual: bool = False) -> ResNet:
    """CIFAR ResNet-18: BasicBlocks (2, 2, 2, 2), embed 512."""
    return ResNet(in_channels, BasicBlock, (2, 2, 2, 2), "resnet18", zero_init_residual)


def resnet34(in_channels: int, zero_init_residual: bool = False) -> ResNet:
    """CIFAR ResNet-34: BasicBlocks (3, 4, 6, 3), embed 512."""
    return ResNet(in_channels, BasicBlock, (3, 4, 6, 3), "resnet34", zero_init_residual)


def resnet50(in_channels: int, zero_init_residual: bool = False) -> ResNet:
    """CIFAR ResNet-50: Bottlenecks (3, 4, 6, 3), embed 2048."""
    return ResNet(in_channels, Bottleneck, (3, 4, 6, 3), "resnet50", zero_init_residual)


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------

BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "seed_cnn": SeedCNN,
    "small_cnn": SmallCNN,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}


def build_backbone(name: str, in_channels: int, width: int | None = None) -> nn.Module:
    """Build a registered backbone with its default settings.

    Args:
        name: a key of :data:`BACKBONES`.
        in_channels: number of image channels (1 for grey, 3 for RGB).
        width: ``small_cnn``'s stem width (None = its default, 32); other
            backbones take none.

    Returns:
        The backbone, with an ``embed_dim`` attribute, on the CPU in fp32.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the valid
            names) or ``in_channels`` is not a positive integer.
    """
    if name not in BACKBONES:
        raise ConfigError(
            f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}"
        )
    if width is None:
        return BACKBONES[name](in_channels)
    if name != "small_cnn":
        raise ConfigError(f"a width applies to small_cnn only, not to {name}")
    return SmallCNN(in_channels, width=width)
