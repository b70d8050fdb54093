"""The SD1.5 denoising UNet (ldm ``UNetModel`` layout) with ControlNet-style residual injection, and its builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from grpose.diffusion.attention import SpatialTransformer
from grpose.diffusion.blocks import (
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)

ResBlockFactory = Callable[[int, int, int, int, int], nn.Module | None]


def _heads(ch: int, num_heads: int, num_head_channels: int) -> tuple[int, int]:
    """(num_heads, head_dim) for a block of width ``ch`` (ldm with legacy=False: head_dim = ch // num_heads)."""
    if num_head_channels == -1:
        return num_heads, ch // num_heads
    return ch // num_head_channels, num_head_channels


def build_time_embed(model_channels: int) -> nn.Sequential:
    """Timestep MLP: Linear(mc, 4mc), SiLU, Linear(4mc, 4mc); keys ``time_embed.{0,2}``."""
    time_embed_dim = model_channels * 4
    return nn.Sequential(
        nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
    )


@dataclass(frozen=True)
class InputSlot:
    """One block of the UNet encoder: ``kind`` is "conv_in", "res" (the ``nr``-th ResBlock of ``level``, with a
    SpatialTransformer when ``attention``) or "down"; ``ds`` is the downsampling factor of its output."""

    index: int
    kind: str
    level: int
    nr: int
    in_channels: int
    out_channels: int
    ds: int
    attention: bool


@dataclass(frozen=True)
class UNetSpec:
    """The SD UNet hyperparameters that the UNet, the ControlNet encoder copy and the Graph Pose Adapter share
    (ldm ``UNetModel`` names). Its builders make the layers with them, so every part agrees by construction."""

    in_channels: int = 4
    model_channels: int = 320
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_heads: int = 8
    num_head_channels: int = -1
    context_dim: int | None = 768
    transformer_depth: int = 1
    dropout: float = 0.0
    use_checkpoint: bool = False
    use_linear_in_transformer: bool = False

    def __post_init__(self) -> None:  # config lists -> tuples, so a spec is hashable and compares by value
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def transformer(self, channels: int) -> SpatialTransformer:
        heads, head_dim = _heads(channels, self.num_heads, self.num_head_channels)
        return SpatialTransformer(
            channels,
            heads,
            head_dim,
            depth=self.transformer_depth,
            context_dim=self.context_dim,
            dropout=self.dropout,
            use_linear=self.use_linear_in_transformer,
            use_checkpoint=self.use_checkpoint,
        )

    def resblock(self, channels: int, out_channels: int | None = None) -> ResBlock:
        return ResBlock(
            channels,
            self.time_embed_dim,
            self.dropout,
            out_channels=out_channels,
            use_checkpoint=self.use_checkpoint,
        )

    def input_layout(self) -> list[InputSlot]:
        """The encoder's blocks in order: the input conv, then per level ``num_res_blocks`` ResBlocks and a
        Downsample (except after the last level). The one place the input-block layout is derived."""
        slots = [InputSlot(0, "conv_in", 0, -1, self.in_channels, self.model_channels, 1, False)]
        ch, ds = self.model_channels, 1
        for level, mult in enumerate(self.channel_mult):
            for nr in range(self.num_res_blocks):
                out_ch = mult * self.model_channels
                attention = ds in self.attention_resolutions
                slots.append(InputSlot(len(slots), "res", level, nr, ch, out_ch, ds, attention))
                ch = out_ch
            if level != len(self.channel_mult) - 1:
                ds *= 2
                slots.append(InputSlot(len(slots), "down", level, -1, ch, ch, ds, False))
        return slots

    def first_resblock_of_level(self) -> dict[int, int]:
        """{input block index: level} of the first ResBlock of every level (the PGI positions, docs/design.md §6)."""
        return {s.index: s.level for s in self.input_layout() if s.kind == "res" and s.nr == 0}


def build_input_blocks(
    spec: UNetSpec, resblock_factory: ResBlockFactory | None = None
) -> tuple[nn.ModuleList, list[int], int, int]:
    """Build the UNet encoder's ``input_blocks`` and return (input_blocks, input_block_channels, ch, ds).

    ``resblock_factory(block_index, level, nr, in_ch, out_ch)`` may return a module that replaces the ResBlock at
    input block ``block_index`` (level ``level``, ``nr``-th ResBlock of the level); None keeps the default ResBlock.
    """
    blocks = nn.ModuleList()
    for slot in spec.input_layout():
        if slot.kind == "conv_in":
            layers: list[nn.Module] = [nn.Conv2d(slot.in_channels, slot.out_channels, 3, padding=1)]
        elif slot.kind == "down":
            layers = [Downsample(slot.in_channels, out_channels=slot.out_channels)]
        else:
            block = None
            if resblock_factory is not None:
                block = resblock_factory(slot.index, slot.level, slot.nr, slot.in_channels, slot.out_channels)
            layers = [block if block is not None else spec.resblock(slot.in_channels, slot.out_channels)]
            if slot.attention:
                layers.append(spec.transformer(slot.out_channels))
        blocks.append(TimestepEmbedSequential(*layers))
    last = spec.input_layout()[-1]
    return blocks, [s.out_channels for s in spec.input_layout()], last.out_channels, last.ds


def build_middle_block(spec: UNetSpec, channels: int) -> TimestepEmbedSequential:
    """ResBlock, SpatialTransformer, ResBlock at the lowest resolution; keys ``middle_block.{0,1,2}``."""
    return TimestepEmbedSequential(spec.resblock(channels), spec.transformer(channels), spec.resblock(channels))


def _maybe_zero(module: nn.Module, zero: bool) -> nn.Module:
    return zero_module(module) if zero else module


class UNetModel(nn.Module):
    """SD1.5 UNet predicting eps (Rombach et al. 2022); optional residuals added to the middle output and skips.

    With ``control`` the injection follows ControlNet (Zhang et al. 2023) / GRPose Sec. 3: the encoder runs without
    autograd when all its parameters are frozen, ``h += control[-1]`` after the middle block and output block ``i``
    gets ``cat[h, skip_i + control[11 - i]]``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        model_channels: int = 320,
        out_channels: int = 4,
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
        zero_init_out: bool = True,
    ) -> None:
        """``zero_init_out``: zero-initialise the output conv, as ldm does (pretrained weights replace it). A frozen
        UNet that keeps random weights (the tiny demo) needs False, or eps is 0 and no gradient reaches the adapter.
        """
        super().__init__()
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
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
        self.input_blocks, input_block_channels, ch, ds = build_input_blocks(spec)
        self.middle_block = build_middle_block(spec, ch)
        self.num_residuals = len(self.input_blocks) + 1

        skip_channels = list(input_block_channels)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(spec.channel_mult))):
            for i in range(num_res_blocks + 1):
                out_ch = model_channels * mult
                layers: list[nn.Module] = [spec.resblock(ch + skip_channels.pop(), out_ch)]
                ch = out_ch
                if ds in spec.attention_resolutions:
                    layers.append(spec.transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            _maybe_zero(nn.Conv2d(model_channels, out_channels, 3, padding=1), zero_init_out),
        )

    def _encoder_frozen(self) -> bool:
        modules = (self.time_embed, self.input_blocks, self.middle_block)
        return not any(p.requires_grad for m in modules for p in m.parameters())

    def _encode(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.model_channels)  # float32 (B, model_channels)
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        return h, emb, hs

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None,
        control: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict eps for latent ``x`` (B, C, H, W) at ``timesteps`` (B,) given ``context`` (B, 77, context_dim)."""
        if control is not None:
            if len(control) != self.num_residuals:
                raise ValueError(f"UNetModel expects {self.num_residuals} control residuals, got {len(control)}")
            control = list(control)
            if self._encoder_frozen():
                with torch.no_grad():
                    h, emb, hs = self._encode(x, timesteps, context)
            else:
                h, emb, hs = self._encode(x, timesteps, context)
            h = h + control.pop()
        else:
            h, emb, hs = self._encode(x, timesteps, context)
        for block in self.output_blocks:
            skip = hs.pop()
            if control is not None:
                skip = skip + control.pop()
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h.type(x.dtype))
