"""MobileNetV2 AE net: torchvision backbone + mmpose 0.x AESimpleHead (docs/pose_pipeline.md §1.2, §4.2)."""

from __future__ import annotations

import re

import torch
from torch import nn

# Blocks per layer of mmpose's MobileNetV2 (arch settings n), docs/pose_pipeline.md §4.2.
_LAYER_BLOCKS = (1, 2, 3, 4, 3, 3, 1)
_LAYER_OFFSET = [1 + sum(_LAYER_BLOCKS[:i]) for i in range(len(_LAYER_BLOCKS))]


def mmpose_to_torchvision_key(key: str) -> str:
    """Rename an mmpose MobileNetV2 backbone key (without ``backbone.``) to torchvision ``features`` naming."""
    m = re.fullmatch(r"conv1\.(conv|bn)\.(.+)", key)
    if m:
        return _stem(m, "0")
    m = re.fullmatch(r"conv2\.(conv|bn)\.(.+)", key)
    if m:
        return _stem(m, "18")
    m = re.fullmatch(r"layer(\d)\.(\d+)\.conv\.(\d)\.(conv|bn)\.(.+)", key)
    if not m:
        return key
    layer, block, part, kind, rest = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), m.group(5)
    idx = _LAYER_OFFSET[layer - 1] + block
    last = 1 if layer == 1 else 2  # the projection ConvModule is split into conv.{last} and conv.{last + 1}
    if part == last:
        return f"{idx}.conv.{last if kind == 'conv' else last + 1}.{rest}"
    return f"{idx}.conv.{part}.{0 if kind == 'conv' else 1}.{rest}"


def _stem(m: re.Match, idx: str) -> str:
    return f"{idx}.{0 if m.group(1) == 'conv' else 1}.{m.group(2)}"


def build_mobilenetv2_backbone(width_mult: float = 1.0) -> nn.Sequential:
    """torchvision ``mobilenet_v2().features``: the same function as mmpose's MobileNetV2(out_indices=(7,))."""
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None, width_mult=width_mult).features


class AESimpleHead(nn.Module):
    """Three 4x4 stride-2 deconvs (BN, ReLU) and a 1x1 conv to 2K channels (heatmaps then tags)."""

    def __init__(self, in_channels: int = 1280, num_joints: int = 17, channels: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.ConvTranspose2d(in_channels if i == 0 else channels, channels, 4, 2, 1, 0, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, 2 * num_joints, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.final_layer(self.deconv_layers(x))]


class MobileNetV2AE(nn.Module):
    """mmpose ``AssociativeEmbedding``: MobileNetV2 + ``AESimpleHead``; mmpose keys map via ``rename_mmpose_key``."""

    def __init__(self, width_mult: float = 1.0, num_joints: int = 17, head_channels: int = 256) -> None:
        super().__init__()
        self.backbone = build_mobilenetv2_backbone(width_mult)
        self.keypoint_head = AESimpleHead(self.backbone[-1][0].out_channels, num_joints, head_channels)

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image (N,3,H,W) -> [(N,2K,H/4,W/4)]."""
        return self.keypoint_head(self.forward_backbone(x))


def rename_mmpose_key(key: str) -> str:
    """mmpose checkpoint key -> ``MobileNetV2AE`` key (head keys are unchanged)."""
    if key.startswith("backbone."):
        return "backbone." + mmpose_to_torchvision_key(key[len("backbone.") :])
    return key
