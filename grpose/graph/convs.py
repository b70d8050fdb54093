"""ViG graph convolutions (EdgeConv, MRConv, GraphSAGE, GIN) on a kNN graph, without (B, 2C, N, k) tensors.

All four keep ViG's parameter layout (``BasicConv`` = grouped 1x1 conv, groups 4, + ReLU, stored as ``nn.0``)
so released checkpoints load (docs/design.md §6, docs/release_behaviours.md §6). The neighbour aggregation runs on
per-node projections and a gather of projected features instead of materialising the concatenated edge
tensor; see ``EdgeConv`` for the algebra.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Default bound on the gathered (B, C, nodes, k) block held at once by gather_max; CUDA takes one chunk at the
# real sizes (each chunk is several launches; 32M entries at batch 16 is about 0.3 GB of temporaries).
GATHER_BUDGET = 1 << 22
GATHER_BUDGET_CUDA = 1 << 25


def _expand_index(idx: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, n, k) neighbour indices -> (B, C, n * k) view usable by ``torch.gather`` along the node axis."""
    batch, n, k = idx.shape
    return idx.reshape(batch, 1, n * k).expand(batch, channels, n * k)


class _GatherMax(torch.autograd.Function):
    """out[b, c, i] = max_j feats[b, c, idx[b, i, j]]; saves only the argmax node (B, C, N) for backward."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, idx: torch.Tensor, chunk: int) -> torch.Tensor:  # type: ignore[override]
        batch, channels, num_nodes = feats.shape
        k = idx.shape[-1]
        values, winners = [], []
        for start in range(0, idx.shape[1], chunk):
            part = idx[:, start : start + chunk]  # (B, n, k)
            n = part.shape[1]
            index = _expand_index(part, channels)  # (B, C, n*k)
            gathered = torch.gather(feats, 2, index).view(batch, channels, n, k)  # (B, C, n, k)
            best, arg = gathered.max(dim=-1)  # (B, C, n)
            values.append(best)
            winners.append(torch.gather(index.view(batch, channels, n, k), 3, arg.unsqueeze(-1)).squeeze(-1))
        winner = torch.cat(winners, dim=2)  # (B, C, N) node index achieving the max
        ctx.save_for_backward(winner)
        ctx.num_nodes = num_nodes
        return torch.cat(values, dim=2)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (winner,) = ctx.saved_tensors
        grad = grad_out.new_zeros(grad_out.shape[0], grad_out.shape[1], ctx.num_nodes)
        grad.scatter_add_(2, winner, grad_out)
        return grad, None, None


def gather_max(feats: torch.Tensor, idx: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Max of ``feats`` (B, C, N) over the neighbours ``idx`` (B, N, k) of each node -> (B, C, N)."""
    batch, channels, _ = feats.shape
    budget = GATHER_BUDGET_CUDA if feats.is_cuda else GATHER_BUDGET
    chunk = chunk_size or max(1, budget // (batch * channels * idx.shape[-1]))  # nodes per chunk
    return _GatherMax.apply(feats, idx, chunk)


def gather_sum(feats: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Sum of ``feats`` (B, C, N) over the neighbours ``idx`` (B, N, k) of each node -> (B, C, N)."""
    batch, channels, _ = feats.shape
    n, k = idx.shape[1:]
    gathered = torch.gather(feats, 2, _expand_index(idx, channels))  # (B, C, N*k)
    return gathered.view(batch, channels, n, k).sum(dim=-1)


def basic_conv(in_channels: int, out_channels: int, groups: int = 4, bias: bool = True) -> nn.Sequential:
    """ViG ``BasicConv([in, out])``: grouped 1x1 conv + ReLU, kaiming-normal weights and zero bias."""
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"grouped conv needs channels divisible by groups={groups}, got {in_channels}->{out_channels}")
    conv = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias)
    nn.init.kaiming_normal_(conv.weight)
    if bias:
        nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU())


def dense_grouped_weight(conv: nn.Conv2d) -> torch.Tensor:
    """Block-diagonal (out, in) matrix equal to a grouped 1x1 conv's weight (differentiable)."""
    groups = conv.groups
    out_ch, in_per_group = conv.weight.shape[:2]
    blocks = conv.weight.reshape(groups, out_ch // groups, in_per_group)  # (g, out/g, in/g)
    return torch.block_diag(*blocks.unbind(0))  # (out, in)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 conv on node features: (B, Cin, N) with weight (Cout, Cin) -> (B, Cout, N)."""
    out = torch.matmul(weight, x)
    return out if bias is None else out + bias[None, :, None]


class EdgeConv(nn.Module):
    """EdgeConv: out_i = max_j ReLU(W [y_i; y_j - y_i] + b), W a grouped 1x1 conv (ViG; docs/design.md §6).

    Memory-efficient evaluation. Expand the grouped weight to its block-diagonal (Cout, 2C) form and split it
    into A (acting on y_i) and D (acting on y_j - y_i): W [y_i; y_j - y_i] = (A - D) y_i + D y_j. ReLU is
    monotone, so max_j ReLU(p_i + q_j) = ReLU(p_i + max_j q_j) with p = (A - D) y + b and q = D y computed
    once per node. Output rows whose group reads only y_i channels (the first half for groups 4) have D = 0
    and need no neighbours at all; only the remaining rows gather q. Nothing of size (B, 2C, N, k) exists and
    backward keeps just the argmax node per (b, c, i). Weights stay in the grouped layout ``nn.0``.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.nn = basic_conv(2 * in_channels, out_channels, groups, bias)
        rows_per_group, in_per_group = out_channels // groups, 2 * in_channels // groups
        # Output rows whose group input range [g * in/g, (g+1) * in/g) reaches into the y_j - y_i half.
        neighbour_rows = [r for r in range(out_channels) if (r // rows_per_group + 1) * in_per_group > in_channels]
        self.register_buffer("neighbour_rows", torch.tensor(neighbour_rows, dtype=torch.long), persistent=False)
        self._first_row = neighbour_rows[0] if neighbour_rows else out_channels
        self._contiguous = neighbour_rows == list(range(self._first_row, out_channels))

    def forward(self, y: torch.Tensor, idx: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """y (B, C, N) node features, idx (B, N, k) neighbours -> (B, Cout, N)."""
        conv = self.nn[0]
        weight = dense_grouped_weight(conv).to(y.dtype)  # (Cout, 2C)
        a, d = weight[:, : self.in_channels], weight[:, self.in_channels :]
        p = _conv1x1(y, a - d, None if conv.bias is None else conv.bias.to(y.dtype))  # (B, Cout, N)
        if not self._contiguous:
            rows = self.neighbour_rows
            q_max = gather_max(_conv1x1(y, d[rows]), idx, chunk_size)
            return torch.relu(p.index_add(1, rows, q_max))
        q_max = gather_max(_conv1x1(y, d[self._first_row :]), idx, chunk_size)  # (B, Cj, N)
        head, tail = p[:, : self._first_row], p[:, self._first_row :]
        return torch.relu(torch.cat([head, tail + q_max], dim=1))


class MRConv(nn.Module):
    """Max-Relative conv (ViG): out = BasicConv(interleave[y_i, max_j (y_j - y_i)]), keys ``nn.0``."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.nn = basic_conv(2 * in_channels, out_channels, groups, bias)

    def forward(self, y: torch.Tensor, idx: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """y (B, C, N), idx (B, N, k) -> (B, Cout, N); max_j (y_j - y_i) = max_j y_j - y_i."""
        rel = gather_max(y, idx, chunk_size) - y  # (B, C, N)
        batch, channels, num_nodes = y.shape
        mixed = torch.stack([y, rel], dim=2).reshape(batch, 2 * channels, num_nodes, 1)  # (B, 2C, N, 1) interleaved
        return self.nn(mixed).squeeze(-1)


class GraphSAGE(nn.Module):
    """GraphSAGE (ViG): out = nn2(cat[y_i, max_j nn1(y_j)]), keys ``nn1.0`` and ``nn2.0``."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.nn1 = basic_conv(in_channels, in_channels, groups, bias)
        self.nn2 = basic_conv(2 * in_channels, out_channels, groups, bias)

    def forward(self, y: torch.Tensor, idx: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """y (B, C, N), idx (B, N, k) -> (B, Cout, N); nn1 is per node, so it runs before the gather."""
        projected = self.nn1(y.unsqueeze(-1)).squeeze(-1)  # (B, C, N)
        neigh = gather_max(projected, idx, chunk_size)
        return self.nn2(torch.cat([y, neigh], dim=1).unsqueeze(-1)).squeeze(-1)


class GIN(nn.Module):
    """GIN (ViG): out = nn((1 + eps) y_i + sum_j y_j), learnable ``eps`` (init 0), keys ``nn.0``.

    ``eps`` has shape (1,) as ViG's ``GINConv2d`` stores it (``torch.Tensor([0.0])``), so its checkpoints load
    strictly; a 0-d ``eps`` (our earlier layout) is reshaped on load.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.nn = basic_conv(in_channels, out_channels, groups, bias)
        self.eps = nn.Parameter(torch.zeros(1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001 (torch signature)
        key = prefix + "eps"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, y: torch.Tensor, idx: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """y (B, C, N), idx (B, N, k) -> (B, Cout, N)."""
        agg = gather_sum(y, idx) + (1 + self.eps) * y
        return self.nn(agg.unsqueeze(-1)).squeeze(-1)


GRAPH_CONVS: dict[str, type[nn.Module]] = {"edge": EdgeConv, "mr": MRConv, "sage": GraphSAGE, "gin": GIN}


def naive_edge_conv(conv: nn.Conv2d, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Straightforward EdgeConv that gathers the (B, 2C, N, k) edge tensor; reference for tests and benchmarks."""
    batch, channels, num_nodes = y.shape
    k = idx.shape[-1]
    x_j = torch.gather(y, 2, _expand_index(idx, channels)).view(batch, channels, num_nodes, k)  # (B, C, N, k)
    x_i = y.unsqueeze(-1).expand(-1, -1, -1, k)  # (B, C, N, k)
    edges = torch.cat([x_i, x_j - x_i], dim=1)  # (B, 2C, N, k)
    return F.relu(conv(edges)).amax(dim=-1)  # (B, Cout, N)
