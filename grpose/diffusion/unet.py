"""The SD1.5 denoising UNet (ldm ``UNetModel`` layout) with ControlNet-style residual injection, and its builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def _transformer(
    ch: int,
    num_heads: int,
    num_head_channels: int,
    context_dim: int | None,
    transformer_depth: int,
    dropout: float,
    use_linear_in_transformer: bool,
    use_checkpoint: bool,
) -> SpatialTransformer:
    heads, head_dim = _heads(ch, num_heads, num_head_channels)
    return SpatialTransformer(
        ch,
        heads,
        head_dim,
        depth=transformer_depth,
        context_dim=context_dim,
        dropout=dropout,
        use_linear=use_linear_in_transformer,
        use_checkpoint=use_checkpoint,
    )


def build_input_blocks(
    in_channels: int,
    model_channels: int,
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    channel_mult: Sequence[int],
    num_heads: int,
    context_dim: int | None,
    transformer_depth: int = 1,
    dropout: float = 0.0,
    use_checkpoint: bool = False,
    use_linear_in_transformer: bool = False,
    num_head_channels: int = -1,
    resblock_factory: ResBlockFactory | None = None,
) -> tuple[nn.ModuleList, list[int], int, int]:
    """Build the UNet encoder's ``input_blocks`` and return (input_blocks, input_block_channels, ch, ds).

    ``resblock_factory(block_index, level, nr, in_ch, out_ch)`` may return a module that replaces the ResBlock at
    input block ``block_index`` (level ``level``, ``nr``-th ResBlock of the level); None keeps the default ResBlock.
    """
    time_embed_dim = model_channels * 4
    blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
    channels = [model_channels]
    ch, ds = model_channels, 1
    for level, mult in enumerate(channel_mult):
        for nr in range(num_res_blocks):
            out_ch = mult * model_channels
            block = resblock_factory(len(blocks), level, nr, ch, out_ch) if resblock_factory else None
            if block is None:
                block = ResBlock(ch, time_embed_dim, dropout, out_channels=out_ch, use_checkpoint=use_checkpoint)
            layers: list[nn.Module] = [block]
            ch = out_ch
            if ds in attention_resolutions:
                layers.append(
                    _transformer(
                        ch,
                        num_heads,
                        num_head_channels,
                        context_dim,
                        transformer_depth,
                        dropout,
                        use_linear_in_transformer,
                        use_checkpoint,
                    )
                )
            blocks.append(TimestepEmbedSequential(*layers))
            channels.append(ch)
        if level != len(channel_mult) - 1:
            blocks.append(TimestepEmbedSequential(Downsample(ch, out_channels=ch)))
            channels.append(ch)
            ds *= 2
    return blocks, channels, ch, ds


def build_middle_block(
    ch: int,
    model_channels: int,
    num_heads: int,
    context_dim: int | None,
    transformer_depth: int = 1,
    dropout: float = 0.0,
    use_checkpoint: bool = False,
    use_linear_in_transformer: bool = False,
    num_head_channels: int = -1,
) -> TimestepEmbedSequential:
    """ResBlock, SpatialTransformer, ResBlock at the lowest resolution; keys ``middle_block.{0,1,2}``."""
    time_embed_dim = model_channels * 4
    return TimestepEmbedSequential(
        ResBlock(ch, time_embed_dim, dropout, use_checkpoint=use_checkpoint),
        _transformer(
            ch,
            num_heads,
            num_head_channels,
            context_dim,
            transformer_depth,
            dropout,
            use_linear_in_transformer,
            use_checkpoint,
        ),
        ResBlock(ch, time_embed_dim, dropout, use_checkpoint=use_checkpoint),
    )


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
        attention_resolutions = tuple(attention_resolutions)
        common = dict(
            transformer_depth=transformer_depth,
            dropout=dropout,
            use_checkpoint=use_checkpoint,
            use_linear_in_transformer=use_linear_in_transformer,
            num_head_channels=num_head_channels,
        )
        self.time_embed = build_time_embed(model_channels)
        self.input_blocks, input_block_channels, ch, ds = build_input_blocks(
            in_channels,
            model_channels,
            num_res_blocks,
            attention_resolutions,
            channel_mult,
            num_heads,
            context_dim,
            **common,
        )
        self.middle_block = build_middle_block(ch, model_channels, num_heads, context_dim, **common)
        self.num_residuals = len(self.input_blocks) + 1

        time_embed_dim = model_channels * 4
        skip_channels = list(input_block_channels)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out_ch = model_channels * mult
                layers: list[nn.Module] = [
                    ResBlock(
                        ch + skip_channels.pop(),
                        time_embed_dim,
                        dropout,
                        out_channels=out_ch,
                        use_checkpoint=use_checkpoint,
                    )
                ]
                ch = out_ch
                if ds in attention_resolutions:
                    layers.append(
                        _transformer(
                            ch,
                            num_heads,
                            num_head_channels,
                            context_dim,
                            transformer_depth,
                            dropout,
                            use_linear_in_transformer,
                            use_checkpoint,
                        )
                    )
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
