"""Graph Pose Adapter: trainable UNet-encoder copy with PGI blocks fed by the pose encoder (docs/design.md §6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from grpose.adapter.controlnet import ControlEncoder
from grpose.adapter.pgi import PGI
from grpose.adapter.pose_encoder import PoseEncoder
from grpose.diffusion.blocks import apply_layer
from grpose.diffusion.unet import UNetSpec


def run_block(
    block: nn.Sequential,
    h: torch.Tensor,
    emb: torch.Tensor,
    context: torch.Tensor | None,
    pose: torch.Tensor | None,
    pose_cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply an input block's layers; a PGI also gets the pose feature of its level (or its cached pose branch)."""
    for layer in block:
        h = layer(h, emb, pose, pose_cond) if isinstance(layer, PGI) else apply_layer(layer, h, emb, context)
    return h


class GraphPoseAdapter(ControlEncoder):
    """GRPose's Graph Pose Adapter (GRPose Sec. 3; docs/release_behaviours.md §5): 13 residuals for the frozen UNet.

    The ResBlock at each input block in ``inject_layers`` (any subset of the first-ResBlock-of-a-level indices,
    [1, 4, 7, 10] for SD1.5) becomes a PGI that also receives the pose feature of its level; ``inject_channels``
    gives the pose-encoder width per level. Unlike ControlNet nothing is added at the input; the hint is the
    rendered skeleton in [-1, 1] at image resolution (8x the latent).
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
        inject_layers: Sequence[int] = (1, 4, 7, 10),
        inject_channels: Sequence[int] = (192, 256, 384, 512),
        graph_conv: str = "edge",
        k: int = 9,
        dilation: int = 1,
        knn_chunk_size: int | None = None,
        knn_backend: str = "torch",
    ) -> None:
        layout = UNetSpec(num_res_blocks=num_res_blocks, channel_mult=tuple(channel_mult))
        candidates = layout.first_resblock_of_level()
        inject_layers = [int(i) for i in inject_layers]
        bad = [i for i in inject_layers if i not in candidates]
        if bad or len(set(inject_layers)) != len(inject_layers):
            raise ValueError(
                f"inject_layers={inject_layers}: each entry must be the input-block index of the first ResBlock of a "
                f"level, at most once; with num_res_blocks={num_res_blocks} and {len(channel_mult)} levels the "
                f"choices are {sorted(candidates)} (offending: {bad or 'duplicates'})"
            )
        if len(inject_channels) != len(channel_mult):
            raise ValueError(
                f"inject_channels={list(inject_channels)} must give one pose-feature width per level "
                f"({len(channel_mult)} levels for channel_mult={list(channel_mult)})"
            )
        level_of_block = {i: candidates[i] for i in sorted(inject_layers)}

        def make_pgi(block_index: int, level: int, nr: int, in_ch: int, out_ch: int) -> nn.Module | None:
            if block_index not in level_of_block:
                return None
            return PGI(
                channels=in_ch,
                emb_channels=model_channels * 4,
                cond_channels=inject_channels[level],
                out_channels=out_ch,
                dropout=dropout,
                use_checkpoint=use_checkpoint,
                graph_conv=graph_conv,
                k=k,
                dilation=dilation,
                knn_chunk_size=knn_chunk_size,
                knn_backend=knn_backend,
            )

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
            resblock_factory=make_pgi,
        )
        self.inject_layers = sorted(inject_layers)
        self.level_of_block = level_of_block
        levels = sorted(level_of_block.values())
        self.pose_encoder = PoseEncoder(hint_channels, inject_channels, levels=levels) if levels else None
        self._pose_encoder_args = (hint_channels, tuple(inject_channels))

    def unused_checkpoint_keys(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Keys a released checkpoint of this config holds that this adapter does not build: ``{key: (shape, why)}``.

        The release builds all pose-encoder stages whatever ``inject_layers`` uses; we build only the stages up to
        the deepest used level and zero convs for used levels (none at all without PGI). ``grpose.checkpoint
        .load_into`` reports these keys as ignored, with the reason, when a file has them with these shapes.
        """
        hint_channels, inject_channels = self._pose_encoder_args
        with torch.device("meta"):
            full = PoseEncoder(hint_channels, inject_channels).state_dict()
        own = set(self.pose_encoder.state_dict()) if self.pose_encoder is not None else set()
        reason = (
            f"pose-encoder stage of a PGI level that inject_layers={self.inject_layers} does not use "
            f"(the release builds all {len(inject_channels)} stages; unused, not built here)"
        )
        return {f"pose_encoder.{k}": (tuple(v.shape), reason) for k, v in full.items() if k not in own}

    def pose_condition(self, hint: torch.Tensor) -> dict[int, torch.Tensor]:
        """{input block: its PGI's pose branch} for ``hint``: everything of the adapter that depends on the pose alone.

        The pose encoder and each PGI's ``GCN_pose(cond_conv(p))`` see neither x nor the timestep, so sampling
        computes them once per image batch (``forward(..., pose_cond=...)``) instead of at every DDIM step.
        """
        pose_features = self.pose_encoder(hint) if self.pose_encoder is not None else []
        out = {}
        for i, level in self.level_of_block.items():
            pgi = next(layer for layer in self.input_blocks[i] if isinstance(layer, PGI))
            out[i] = pgi.pose_branch(pose_features[level])
        return out

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None,
        hint: torch.Tensor | None,
        pose_cond: dict[int, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """x (B, 4, h, w), timesteps (B,), context (B, L, D), hint (B, 3, 8h, 8w) in [-1, 1] -> 13 residuals.

        ``pose_cond``: ``pose_condition(hint)`` computed beforehand (batch B); the hint is then not needed.
        """
        if pose_cond is None:
            self.check_hint(x, hint)
            pose_features = self.pose_encoder(hint) if self.pose_encoder is not None else []
        emb = self.embed_time(timesteps, x.shape[0])
        outs = []
        h = x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            level = self.level_of_block.get(i)
            if pose_cond is not None:
                h = run_block(block, h, emb, context, None, pose_cond.get(i))
            else:
                h = run_block(block, h, emb, context, None if level is None else pose_features[level])
            outs.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h))
        return outs
