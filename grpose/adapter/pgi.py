"""Progressive Graph Integrator: ResBlock replacement fusing pose features by graph convs (docs/design.md §6)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from grpose.diffusion.blocks import TimestepBlock, zero_module
from grpose.graph.gcn import GCN


class FuseLayer(nn.Module):
    """f = fusion_conv(cat[latent_conv(h), pose_conv(p)]), 1x1 convs with bias (docs/release_behaviours.md §5.4.6)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.latent_conv = nn.Conv2d(channels, channels, 1)
        self.pose_conv = nn.Conv2d(channels, channels, 1)
        self.fusion_conv = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.fusion_conv(torch.cat([self.latent_conv(h), self.pose_conv(p)], dim=1))


@contextlib.contextmanager
def _restore_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Undo running-stat updates made inside the block (checkpoint recomputation; docs/release_behaviours.md Q10)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[buf.detach().clone() for buf in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class PGI(TimestepBlock):
    """PGI block (GRPose Sec. 3.2; docs/release_behaviours.md §5.4), in place of the first ResBlock of a level.

    h = conv3x3(SiLU(x)) + linear(SiLU(emb)); h = GroupNorm(32, affine=False)(h); c = cond_conv(pose);
    h, c = GCN_latent(h), GCN_pose(c); f = GCN(fuse(h, c)); out = skip(x) + zero_conv3x3(dropout(f)).
    As in the release there is no normalisation before the first SiLU (docs/release_behaviours.md Q8). With
    ``use_checkpoint`` the whole block is recomputed in backward (torch.utils.checkpoint, non-reentrant) and the
    BatchNorm running statistics are restored after the recomputation, so they are updated exactly once per step
    (fixes Q10).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        cond_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        graph_conv: str = "edge",
        k: int = 9,
        dilation: int = 1,
        knn_chunk_size: int | None = None,
        knn_backend: str = "torch",
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.channels, self.out_channels, self.use_checkpoint = channels, out_channels, use_checkpoint
        self.in_layers = nn.Sequential(nn.Identity(), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.norm = nn.GroupNorm(32, out_channels, affine=False)
        self.cond_conv = nn.Conv2d(cond_channels, out_channels, 3, padding=1)
        gcn_args = dict(
            kernel_size=k, dilation=dilation, conv=graph_conv, chunk_size=knn_chunk_size, knn_backend=knn_backend
        )
        self.gnn_latent = GCN(out_channels, **gcn_args)
        self.gnn_pose = GCN(out_channels, **gcn_args)
        self.fuse = FuseLayer(out_channels)
        self.gnn = GCN(out_channels, **gcn_args)
        self.out_layers = nn.Sequential(
            nn.Identity(), nn.Dropout(p=dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, pose: torch.Tensor | None, pose_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, Cin, H, W), emb (B, E), pose (B, Cp, H, W) -> (B, C, H, W).

        ``pose_cond``: ``pose_branch(pose)`` computed beforehand (sampling reuses it across steps); pose is then unused.
        """
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(
                self._forward,
                x,
                emb,
                pose,
                pose_cond,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), _restore_batchnorm_stats(self)),
            )
        return self._forward(x, emb, pose, pose_cond)

    def pose_branch(self, pose: torch.Tensor) -> torch.Tensor:
        """GCN_pose(cond_conv(pose)): depends on the pose feature only, not on x or the timestep."""
        return self.gnn_pose(self.cond_conv(pose))

    def _forward(
        self, x: torch.Tensor, emb: torch.Tensor, pose: torch.Tensor | None, pose_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        h = self.norm(h)
        c = self.pose_branch(pose) if pose_cond is None else pose_cond
        h = self.gnn_latent(h)
        f = self.gnn(self.fuse(h, c))
        return self.skip_connection(x) + self.out_layers(f)
