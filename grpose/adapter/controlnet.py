"""ControlNet v1 baseline and the trainable UNet-encoder copy it shares with the Graph Pose Adapter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from grpose.diffusion.blocks import TimestepEmbedSequential, timestep_embedding, zero_module
from grpose.diffusion.unet import (
    ResBlockFactory,
    UNetSpec,
    build_input_blocks,
    build_middle_block,
    build_time_embed,
)


def zero_conv1x1(channels: int) -> nn.Sequential:
    """Zero-initialised 1x1 conv in a Sequential (key ``.0``), ControlNet's residual output."""
    return nn.Sequential(zero_module(nn.Conv2d(channels, channels, 1)))


class ControlEncoder(nn.Module):
    """Trainable copy of the UNet encoder (time_embed, input_blocks, middle_block) plus zero-conv outputs.

    Built with the UNet's own builders (grpose.diffusion.unet), so every key matches ``model.diffusion_model.*``
    and can be initialised from SD (docs/design.md §6). ``zero_convs.i`` follows input block i and
    ``middle_block_out`` the middle block: the 13 residuals of ControlNet (Zhang et al. 2023, Sec. 3.2).
    """

    def __init__(
        self,
        in_channels: int = 4,
        model_channels: int = 320,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_heads: int = 8,
        num_head_channels: int = -1,
        context_dim: int | None = 768,
        transformer_depth: int = 1,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        use_linear_in_transformer: bool = False,
        resblock_factory: ResBlockFactory | None = None,
    ) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.spec = spec = UNetSpec(
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=tuple(attention_resolutions),
            channel_mult=tuple(channel_mult),
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            context_dim=context_dim,
            transformer_depth=transformer_depth,
            dropout=dropout,
            use_checkpoint=use_checkpoint,
            use_linear_in_transformer=use_linear_in_transformer,
        )
        self.time_embed = build_time_embed(model_channels)
        self.input_blocks, channels, ch, _ = build_input_blocks(spec, resblock_factory=resblock_factory)
        self.zero_convs = nn.ModuleList(zero_conv1x1(c) for c in channels)
        self.middle_block = build_middle_block(spec, ch)
        self.middle_block_out = zero_conv1x1(ch)

    @staticmethod
    def check_hint(x: torch.Tensor, hint: torch.Tensor) -> None:
        """The hint must be the image-resolution skeleton: 8x the latent's height and width."""
        if hint.dim() != 4 or tuple(hint.shape[-2:]) != (8 * x.shape[-2], 8 * x.shape[-1]):
            raise ValueError(
                f"hint of shape {tuple(hint.shape)} does not fit latent {tuple(x.shape)}: expected (B, C, "
                f"{8 * x.shape[-2]}, {8 * x.shape[-1]}), the rendered pose at image resolution (VAE factor 8)"
            )

    def embed_time(self, timesteps: torch.Tensor, batch: int) -> torch.Tensor:
        """Timestep embedding MLP on the sinusoidal features: (B,) -> (B, 4 * model_channels)."""
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        t_emb = timestep_embedding(timesteps, self.model_channels)  # (B, model_channels) float32
        return self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))


class ControlNet(ControlEncoder):
    """ControlNet v1 baseline: hint encoder (8x downsampling, zero conv) added after input block 0.

    The hint is the dataset's rendered skeleton in [-1, 1], the same input as the Graph Pose Adapter (the
    original ControlNet feeds [0, 1]; we keep one data pipeline for both adapters). Keys follow ControlNet
    v1: ``input_hint_block.{0,2,...,14}``, ``input_blocks``, ``zero_convs.i.0``, ``middle_block_out.0``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        model_channels: int = 320,
        hint_channels: int = 3,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_heads: int = 8,
        num_head_channels: int = -1,
        context_dim: int | None = 768,
        transformer_depth: int = 1,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        use_linear_in_transformer: bool = False,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            channel_mult=channel_mult,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            context_dim=context_dim,
            transformer_depth=transformer_depth,
            dropout=dropout,
            use_checkpoint=use_checkpoint,
            use_linear_in_transformer=use_linear_in_transformer,
        )
        widths = (16, 16, 32, 32, 96, 96, 256)
        strides = (1, 1, 2, 1, 2, 1, 2)
        layers: list[nn.Module] = []
        ch = hint_channels
        for width, stride in zip(widths, strides):
            layers += [nn.Conv2d(ch, width, 3, stride=stride, padding=1), nn.SiLU()]
            ch = width
        layers.append(zero_module(nn.Conv2d(ch, model_channels, 3, padding=1)))
        self.input_hint_block = TimestepEmbedSequential(*layers)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None, hint: torch.Tensor
    ) -> list[torch.Tensor]:
        """x (B, 4, h, w), timesteps (B,), context (B, L, D), hint (B, 3, 8h, 8w) -> 13 residuals."""
        self.check_hint(x, hint)
        emb = self.embed_time(timesteps, x.shape[0])
        guided_hint = self.input_hint_block(hint, emb, context)  # (B, model_channels, h, w)
        outs = []
        h = x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint
            outs.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h))
        return outs
