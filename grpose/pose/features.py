"""PoseFeatureNetwork: frozen MobileNetV2 AE backbone features of a [-1, 1] image (docs/pose_pipeline.md §2.9)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from grpose.checkpoint import CheckpointError, read_state_dict
from grpose.pose.estimator import ARCHS, IMAGENET_MEAN, IMAGENET_STD
from grpose.pose.higherhrnet import load_state_dict_strict
from grpose.pose.mobilenetv2 import build_mobilenetv2_backbone, mmpose_to_torchvision_key

log = logging.getLogger(__name__)


class PoseFeatureNetwork(nn.Module):
    """The pose perception loss's network: MobileNetV2 backbone output (B,1280,H/32,W/32) of an RGB [-1,1] image.

    Preprocessing stays in torch so gradients reach the input: x01 = clamp((x+1)/2, 0, 1), ImageNet normalisation and,
    with ``flip`` (the released feature: the flipped pass of mmpose's flip test, docs/pose_pipeline.md §2.9), a
    horizontal flip. The release additionally truncated the image to uint8 levels, which has no gradient; that is left
    out here. The weights are frozen (eval mode, requires_grad False). Loads the ``backbone.*`` keys of the mmpose
    MobileNetV2 AE checkpoint; ``keypoint_head.*`` keys are ignored.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        flip: bool = True,
        allow_random_init: bool = False,
        width_mult: float = 1.0,
        input_size: int | None = None,
    ) -> None:
        """``input_size``: resize the image (bilinear, differentiable) to the square size the network was trained
        at (the lab's estimator runs 128-px images at 256); None keeps the image size, as released."""
        super().__init__()
        self.flip = flip
        self.input_size = input_size
        self.backbone = build_mobilenetv2_backbone(width_mult)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if checkpoint is None:
            if not allow_random_init:
                spec = ARCHS["mobilenetv2"]
                raise CheckpointError(
                    f"no checkpoint given for the pose feature network: expected {spec.checkpoint} ({spec.what}); "
                    "see models/README.md. Pass allow_random_init=True only for tests."
                )
            log.warning("PoseFeatureNetwork uses random weights (allow_random_init=True)")
        else:
            self.load_mmpose(read_state_dict(checkpoint, what=ARCHS["mobilenetv2"].what), source=str(checkpoint))
        self.eval()
        self.requires_grad_(False)

    def load_mmpose(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strictly load the ``backbone.*`` entries of an mmpose MobileNetV2 checkpoint (head keys ignored)."""
        backbone = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
        load_state_dict_strict(self.backbone, backbone, source=source, rename=mmpose_to_torchvision_key)

    def train(self, mode: bool = True) -> PoseFeatureNetwork:
        """Always stays in eval mode (frozen BN statistics)."""
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1,1] RGB (B,3,H,W) -> normalised (and flipped) network input, differentiable."""
        x01 = ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        x = (x01 - self.mean) / self.std
        if self.input_size is not None and tuple(x.shape[2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return torch.flip(x, [3]) if self.flip else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[-1,1] RGB (B,3,H,W) -> (B,1280,H/32,W/32); always fp32, as the release (autocast disabled)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.backbone(self.preprocess(x.float()))
