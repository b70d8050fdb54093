"""Pose encoder: rendered skeleton image -> one zero-initialised feature map per PGI level (docs/design.md §6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from grpose.diffusion.blocks import zero_module


class PoseEncoder(nn.Module):
    """Conv stem down to 1/4 of the image, then a stride-2 stage per level (docs/release_behaviours.md §4).

    Keys: ``pre_extractor.{0,2,4,6,8}`` (3x3 convs, SiLU between), ``extractors.i.0`` (3x3 stride-2 conv + SiLU)
    and ``zero_convs.i`` (zero-initialised 3x3 conv whose output is feature i; the chain continues from the
    pre-zero-conv tensor). ``levels`` selects the features that are produced (default: all).
    """

    def __init__(
        self,
        hint_channels: int = 3,
        inject_channels: Sequence[int] = (192, 256, 384, 512),
        stem_channels: Sequence[int] = (32, 64, 64, 128, 128),
        levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(stem_channels) != 5:
            raise ValueError(f"stem_channels needs 5 widths (3x3 convs, strides 1,2,1,2,1), got {list(stem_channels)}")
        strides = (1, 2, 1, 2, 1)
        layers: list[nn.Module] = []
        ch = hint_channels
        for width, stride in zip(stem_channels, strides):
            layers += [nn.Conv2d(ch, width, 3, stride=stride, padding=1), nn.SiLU()]
            ch = width
        self.pre_extractor = nn.Sequential(*layers)
        levels = sorted(set(range(len(inject_channels)) if levels is None else levels))
        if not levels or levels[0] < 0 or levels[-1] >= len(inject_channels):
            raise ValueError(f"levels={levels} must be a non-empty subset of 0..{len(inject_channels) - 1}")
        self.levels = levels
        # Stages run up to the deepest requested level; a level without output has no zero conv (no dead params).
        self.extractors = nn.ModuleList()
        self.zero_convs = nn.ModuleList()
        for level, width in enumerate(inject_channels[: levels[-1] + 1]):
            self.extractors.append(nn.Sequential(nn.Conv2d(ch, width, 3, stride=2, padding=1), nn.SiLU()))
            out = zero_module(nn.Conv2d(width, width, 3, padding=1)) if level in levels else nn.Identity()
            self.zero_convs.append(out)
            ch = width

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor | None]:
        """hint (B, 3, H, W) in [-1, 1] -> per level i (B, inject_channels[i], H / 2^(i+3), W / 2^(i+3)) or None.

        Entry i is None for a level that was not requested in ``levels``.
        """
        h = self.pre_extractor(hint)  # (B, 128, H/4, W/4)
        features: list[torch.Tensor | None] = []
        for level, (extractor, zero_conv) in enumerate(zip(self.extractors, self.zero_convs)):
            h = extractor(h)
            features.append(zero_conv(h) if level in self.levels else None)
        return features
