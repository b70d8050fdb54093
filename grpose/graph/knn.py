"""Dense dynamic k-nearest-neighbour graph over feature-map nodes (ViG-style, docs/design.md §6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Default bound on the number of (query, candidate) distance entries held at once per chunk. On a GPU each chunk
# costs a few kernel launches, and launches dominated the kNN time at batch 6 (25 chunks per call on an H200), so
# CUDA gets a larger budget (32M entries, about 400 MB of temporaries) than the CPU (4M).
DEFAULT_KNN_BUDGET = 1 << 22
DEFAULT_KNN_BUDGET_CUDA = 1 << 25


def auto_chunk_size(batch: int, num_nodes: int, budget: int | None = None, device: torch.device | None = None) -> int:
    """Number of query nodes per chunk so that ``batch * chunk * num_nodes`` stays within ``budget``."""
    if budget is None:
        budget = DEFAULT_KNN_BUDGET_CUDA if device is not None and device.type == "cuda" else DEFAULT_KNN_BUDGET
    return max(1, min(num_nodes, budget // max(1, batch * num_nodes)))


def _tie_broken_keys(dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pack (distance, candidate index) into one int64 key whose order is lexicographic (modifies ``dist``).

    For non-negative float32 values the IEEE-754 bit pattern read as an integer is monotone, so
    ``bits << 32 | index`` sorts by distance first and by the lower candidate index among exact ties.
    This makes the neighbour choice deterministic, unlike ``torch.topk`` on floats.
    """
    # dist: (B, n, N) float32; clamp rounding negatives and turn -0.0 into +0.0 before reading the bits.
    dist.clamp_(min=0.0).add_(0.0)
    keys = dist.view(torch.int32).to(torch.int64)  # (B, n, N)
    return keys.bitwise_left_shift_(32).bitwise_or_(index)


KNN_BACKENDS = ("torch", "triton", "auto")
# Dot-product precision of the triton kernel when a call names none: "tf32x3" (tensor cores, fp32-level error) or
# "ieee" (fp32 FMA).
DEFAULT_TRITON_PRECISION = "tf32x3"


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA when triton imports, else 'torch'; other names are checked and kept."""
    if backend not in KNN_BACKENDS:
        raise ValueError(f"knn backend must be one of {KNN_BACKENDS}, got {backend!r}")
    if backend == "auto":
        from grpose.graph import knn_triton

        return "triton" if device.type == "cuda" and knn_triton.available() else "torch"
    return backend


@torch.compiler.disable
@torch.no_grad()
def dense_knn(
    x: torch.Tensor,
    k: int,
    dilation: int = 1,
    chunk_size: int | None = None,
    backend: str = "torch",
    precision: str | None = None,
) -> torch.Tensor:
    """Indices of the k nearest nodes of every node, by squared Euclidean distance of L2-normalised features.

    Args:
        x: node features (B, C, N).
        k: neighbours per node; the node itself is included (distance 0).
        dilation: take the ``k * dilation`` nearest and keep every ``dilation``-th (ViG dilated kNN).
        chunk_size: query nodes per chunk (bounds memory at B * chunk_size * N entries); None picks one.
        backend: "torch" (chunked distance block + int64 top-k), "triton" (fused kernel, grpose.graph.knn_triton,
            CUDA or TRITON_INTERPRET=1) or "auto" (triton on CUDA). Same keys and tie rule in both.
        precision: the triton kernel's dot precision ("ieee" fp32 FMA or "tf32x3", fp32-level error); None takes
            ``DEFAULT_TRITON_PRECISION``.

    Returns:
        idx (B, N, k) int64, neighbours ordered by increasing distance, exact ties broken by lower index.
        The graph is not differentiable (computed under no_grad), as in ViG.
    """
    if x.dim() != 3:
        raise ValueError(f"dense_knn expects node features of shape (B, C, N), got {tuple(x.shape)}")
    batch, _, num_nodes = x.shape
    if k < 1 or dilation < 1:
        raise ValueError(f"dense_knn needs k >= 1 and dilation >= 1, got k={k}, dilation={dilation}")
    span = k * dilation
    if span > num_nodes:
        raise ValueError(
            f"dense_knn: k * dilation = {k} * {dilation} = {span} exceeds the number of nodes {num_nodes}; "
            "use a smaller kernel_size/dilation or a larger feature map"
        )
    if resolve_backend(backend, x.device) == "triton":
        from grpose.graph.knn_triton import knn_triton

        with torch.autocast(device_type=x.device.type, enabled=False):
            feats = F.normalize(x.detach().float(), p=2.0, dim=1)  # (B, C, N)
            idx = knn_triton(feats, span, precision or DEFAULT_TRITON_PRECISION)  # (B, N, span)
        return idx[:, :, ::dilation].contiguous()
    chunk = chunk_size or auto_chunk_size(batch, num_nodes, device=x.device)
    # float32 throughout: under autocast baddbmm would return bf16/fp16 and break the bit-level keys
    with torch.autocast(device_type=x.device.type, enabled=False):
        feats = F.normalize(x.detach().float(), p=2.0, dim=1)  # (B, C, N)
        sq_norm = feats.pow(2).sum(dim=1)  # (B, N)
        queries = feats.transpose(1, 2)  # (B, N, C)
        index = torch.arange(num_nodes, device=x.device, dtype=torch.int64)
        out = []
        for start in range(0, num_nodes, chunk):
            stop = min(start + chunk, num_nodes)
            n = stop - start
            # (B, n, N): ||b||^2 - 2 a.b + ||a||^2, built in place to keep one float buffer per chunk
            dist = torch.baddbmm(
                sq_norm[:, None, :].expand(batch, n, num_nodes), queries[:, start:stop], feats, alpha=-2.0
            )
            dist.add_(sq_norm[:, start:stop, None])
            keys = _tie_broken_keys(dist, index)
            del dist
            nearest = torch.topk(keys, span, dim=-1, largest=False, sorted=True).values
            out.append(nearest & 0xFFFFFFFF)  # (B, n, span) candidate indices
        idx = torch.cat(out, dim=1)  # (B, N, span)
    return idx[:, :, ::dilation].contiguous()  # (B, N, k)
