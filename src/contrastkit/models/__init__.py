"""Networks: backbones (image -> features) and the heads trained on top of them."""

from contrastkit.models.backbones import BACKBONES, build_backbone
from contrastkit.models.heads import ProjectionHead

__all__ = ["BACKBONES", "ProjectionHead", "build_backbone"]
