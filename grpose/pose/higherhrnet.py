"""HigherHRNet: timm's HRNet backbone + mmpose 0.x's AEHigherResolutionHead, its keys (docs/pose_pipeline.md §1.1)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from grpose.checkpoint import CheckpointError

log = logging.getLogger(__name__)

# timm variants usable as the backbone; the head width follows branch 0 of stage 4.
HRNET_VARIANTS: dict[str, str] = {"higherhrnet_w48": "hrnet_w48", "higherhrnet_w18_small": "hrnet_w18_small"}


class BasicBlock(nn.Module):
    """ResNet basic block without downsample (in = out channels), mmpose key names conv1/bn1/conv2/bn2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + x
        return self.relu(out)


class AEHigherResolutionHead(nn.Module):
    """Stage-0 1x1 conv (heatmaps + tags), concat, one 4x4 deconv + 4 basic blocks, stage-1 1x1 conv (heatmaps).

    Keys: ``final_layers.{0,1}``, ``deconv_layers.0.0.{0,1}`` (ConvTranspose2d, BN), ``deconv_layers.0.{1..4}.0.*``.
    """

    def __init__(self, in_channels: int = 48, num_joints: int = 17, num_basic_blocks: int = 4) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.final_layers = nn.ModuleList(
            [nn.Conv2d(in_channels, 2 * num_joints, 1), nn.Conv2d(in_channels, num_joints, 1)]
        )
        up = nn.Sequential(
            nn.ConvTranspose2d(in_channels + 2 * num_joints, in_channels, 4, 2, 1, 0, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        blocks = [nn.Sequential(BasicBlock(in_channels)) for _ in range(num_basic_blocks)]
        self.deconv_layers = nn.ModuleList([nn.Sequential(up, *blocks)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y0 = self.final_layers[0](x)  # (N, 2K, H/4, W/4): heatmaps then tags
        x = self.deconv_layers[0](torch.cat([x, y0], 1))  # (N, C, H/2, W/2)
        return [y0, self.final_layers[1](x)]  # second output: heatmaps only


def build_hrnet_backbone(variant: str = "hrnet_w48") -> nn.Module:
    """timm HRNet returning mmpose's backbone output: branch 0 of stage 4 (stride 4), as a one-element list.

    The unused fuse outputs of the last stage-4 module are dropped, so the keys equal mmpose's
    (docs/pose_pipeline.md §4.1).
    """
    import timm

    m = timm.create_model(variant, pretrained=False, features_only=True, feature_location="", out_indices=(1,))
    m.stage4[-1].fuse_layers = m.stage4[-1].fuse_layers[:1]
    return m


class HigherHRNet(nn.Module):
    """mmpose ``AssociativeEmbedding``: HRNet + ``AEHigherResolutionHead``, keys ``backbone.*``/``keypoint_head.*``."""

    def __init__(self, variant: str = "hrnet_w48", num_joints: int = 17) -> None:
        super().__init__()
        self.backbone = build_hrnet_backbone(variant)
        width = self.backbone.feature_info.channels()[0]
        self.keypoint_head = AEHigherResolutionHead(width, num_joints)

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image (N,3,H,W) -> [(N,2K,H/4,W/4), (N,K,H/2,W/2)]."""
        return self.keypoint_head(self.forward_backbone(x))


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "state dict",
    rename: Callable[[str], str] | None = None,
) -> None:
    """Load with strict key checking; ``rename`` maps file keys to module keys. ``num_batches_tracked`` may be absent.

    Raises CheckpointError listing the missing and unexpected keys (in the file's naming) and shape mismatches.
    """
    rename = rename or (lambda k: k)
    own = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    back: dict[str, str] = {}
    for key, value in state_dict.items():
        target = rename(key)
        back[target] = key
        if target not in own:
            unexpected.append(key)
        elif tuple(own[target].shape) != tuple(value.shape):
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[target].shape)}")
        else:
            mapped[target] = value
    missing = [k for k in own if k not in mapped and not (k.endswith("num_batches_tracked") and k not in back)]
    if unexpected or mismatched or missing:
        lines = [f"{source} does not fit the model:"]
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"  {name} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(mapped, strict=False)
