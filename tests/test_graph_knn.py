"""kNN graph: equals a brute-force reference, ties broken by lower index, chunking and dilation."""

import numpy as np
import pytest
import torch

from grpose.graph.knn import dense_knn


def brute_force_knn(x: torch.Tensor, k: int, dilation: int = 1) -> np.ndarray:
    """Explicit float64 pairwise distances of the L2-normalised features; stable order (distance, index)."""
    f = x.double().numpy()
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)  # (B, C, N)
    out = []
    for sample in f:
        diff = sample[:, :, None] - sample[:, None, :]  # (C, N, N)
        dist = (diff**2).sum(0)  # (N, N)
        order = np.argsort(dist, axis=1, kind="stable")[:, : k * dilation]
        out.append(order[:, ::dilation])
    return np.stack(out)


def test_random_inputs_match_brute_force():
    x = torch.randn(3, 16, 70)
    idx = dense_knn(x, 9)
    assert idx.shape == (3, 70, 9) and idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.numpy(), brute_force_knn(x, 9))
    assert (idx[:, :, 0] == torch.arange(70)).all()  # the node itself is its nearest neighbour


def test_exact_ties_are_broken_by_lower_index():
    # Signed one-hot prototypes: normalised features and their distances (0, 2 or 4) are exact in float32,
    # and every prototype is repeated, so nearly every neighbour list ends inside a block of exact ties.
    channels, nodes = 8, 60
    protos = torch.cat([torch.eye(channels), -torch.eye(channels)])  # (16, C)
    pick = torch.randint(0, len(protos), (2, nodes))
    x = protos[pick].transpose(1, 2) * torch.rand(2, 1, nodes).add(0.5)  # (B, C, N), scale is normalised away
    for k in (4, 9, 13):
        idx = dense_knn(x, k, chunk_size=7)
        np.testing.assert_array_equal(idx.numpy(), brute_force_knn(x, k))
    # duplicated nodes: the reference keeps the lower index first, so the self-node may come second
    dup = torch.randn(1, 5, 10).repeat(1, 1, 3)  # node i, i+10, i+20 identical
    np.testing.assert_array_equal(dense_knn(dup, 3).numpy(), brute_force_knn(dup, 3))


@pytest.mark.parametrize("chunk_size", [1, 5, 64, None])
def test_chunking_does_not_change_the_graph(chunk_size):
    x = torch.randn(2, 12, 64)
    np.testing.assert_array_equal(dense_knn(x, 9, chunk_size=chunk_size).numpy(), dense_knn(x, 9).numpy())


def test_dilation_keeps_every_dth_of_the_k_times_d_nearest():
    x = torch.randn(2, 10, 50)
    np.testing.assert_array_equal(dense_knn(x, 4, dilation=3).numpy(), brute_force_knn(x, 4, 3))


def test_graph_is_not_differentiable_and_errors_are_clear():
    x = torch.randn(1, 4, 20, requires_grad=True)
    assert not dense_knn(x, 3).requires_grad
    with pytest.raises(ValueError, match="exceeds the number of nodes"):
        dense_knn(x, 9, dilation=3)
    with pytest.raises(ValueError, match=r"\(B, C, N\)"):
        dense_knn(torch.randn(4, 20), 3)
