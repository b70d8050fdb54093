"""ViG-style dynamic graph convolution block used inside PGI (docs/design.md §6, docs/release_behaviours.md §6)."""

from __future__ import annotations

import torch
from torch import nn

from grpose.graph.convs import GRAPH_CONVS
from grpose.graph.knn import dense_knn


class DynamicGraphConv(nn.Module):
    """Builds the kNN graph of the node features and applies a graph conv; parameters live in ``gconv``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 9,
        dilation: int = 1,
        conv: str = "edge",
        chunk_size: int | None = None,
        knn_backend: str = "torch",
    ) -> None:
        super().__init__()
        if conv not in GRAPH_CONVS:
            raise ValueError(f"unknown graph conv {conv!r}; choose one of {sorted(GRAPH_CONVS)}")
        self.kernel_size, self.dilation, self.chunk_size = kernel_size, dilation, chunk_size
        self.knn_backend = knn_backend
        self.gconv = GRAPH_CONVS[conv](in_channels, out_channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y (B, C, N) -> (B, Cout, N); neighbours by L2-normalised feature distance, self included."""
        idx = dense_knn(y, self.kernel_size, self.dilation, self.chunk_size, backend=self.knn_backend)  # (B, N, k)
        return self.gconv(y, idx, self.chunk_size)


class GCN(nn.Module):
    """GCN block: y = BN(conv1x1(x)); out = graph_conv(y) + x (docs/release_behaviours.md §6; no FFN unlike ViG).

    Keys: ``conv1.0`` (1x1 conv), ``conv1.1`` (BatchNorm2d), ``graph_conv.gconv.*`` (see grpose.graph.convs).
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int = 9,
        dilation: int = 1,
        conv: str = "edge",
        chunk_size: int | None = None,
        knn_backend: str = "torch",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.BatchNorm2d(in_channels))
        self.graph_conv = DynamicGraphConv(
            in_channels, in_channels, kernel_size, dilation, conv, chunk_size, knn_backend
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W); nodes are the H*W positions of each sample."""
        batch, channels, height, width = x.shape
        y = self.conv1(x).reshape(batch, channels, height * width)  # (B, C, N)
        out = self.graph_conv(y).reshape(batch, -1, height, width)  # (B, C, H, W)
        return out + x
