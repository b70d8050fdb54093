"""UNet building blocks in the ldm layout: timestep embedding, GroupNorm32, ResBlock, Down/Upsample, sequencing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding (DDPM / ldm ``timestep_embedding``): ``cat[cos, sin]`` of shape (N, dim)."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps[:, None].float() * freqs[None]  # (N, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place and return it (ControlNet / ldm zero-initialised outputs)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that computes in float32 and casts back to the input dtype (ldm ``GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and self.weight.dtype != torch.float32:  # frozen in bf16 (frozen_dtype)
            weight, bias = self.weight.float(), None if self.bias is None else self.bias.float()
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """The UNet's normalisation layer: 32 groups, eps 1e-5, affine."""
    return GroupNorm32(32, channels, eps=1e-5)


def maybe_checkpoint(module: nn.Module, use_checkpoint: bool, fn, *args):
    """Run ``fn(*args)`` with activation checkpointing when enabled and autograd is recording for this block.

    That is when the module trains, or when an input requires grad: the frozen UNet's decoder stays in eval mode
    but backpropagates to the adapter's residuals, and its activations are what checkpointing saves (as ldm's
    ``checkpoint`` did, which looked at the flag only). Inference under no_grad never recomputes.
    """
    wants_grad = module.training or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    if use_checkpoint and torch.is_grad_enabled() and wants_grad:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ContextBlock(nn.Module):
    """A module whose forward takes the cross-attention context as a second argument (SpatialTransformer)."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def apply_layer(layer: nn.Module, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """Call one block layer with what it takes: ``emb`` for TimestepBlocks, ``context`` for ContextBlocks."""
    if isinstance(layer, TimestepBlock):
        return layer(x, emb)
    if isinstance(layer, ContextBlock):
        return layer(x, context)
    return layer(x)


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential container that hands ``emb`` to TimestepBlocks and ``context`` to ContextBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = apply_layer(layer, x, emb, context)
        return x


class ResBlock(TimestepBlock):
    """ldm ResBlock: GroupNorm-SiLU-conv, add projected timestep embedding, GroupNorm-SiLU-dropout-zero conv, skip."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.channels = channels
        self.out_channels = out_channels
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self, self.use_checkpoint, self._forward, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]  # (N, C) -> (N, C, 1, 1)
        h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Halve the resolution with a 3x3 stride-2 convolution (ldm ``Downsample`` with use_conv=True)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest) and apply a 3x3 convolution (ldm ``Upsample`` with use_conv=True)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
