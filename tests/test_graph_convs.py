"""Graph convs and the GCN block: exact vs the naive EdgeConv, permutation equivariance, fwd/bwd."""

import pytest
import torch

from grpose.graph.convs import GRAPH_CONVS, EdgeConv, naive_edge_conv
from grpose.graph.gcn import GCN
from grpose.graph.knn import dense_knn


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_edge_conv_equals_naive_gather_form(chunk_size):
    torch.manual_seed(1)
    conv = EdgeConv(16, 16).double()
    with torch.no_grad():
        conv.nn[0].bias.normal_()
    y = torch.randn(2, 16, 40, dtype=torch.float64, requires_grad=True)
    idx = dense_knn(y, 6)
    ours, ref = conv(y, idx, chunk_size), naive_edge_conv(conv.nn[0], y, idx)
    torch.testing.assert_close(ours, ref)
    weights = torch.randn_like(ours)
    params = [y, conv.nn[0].weight, conv.nn[0].bias]
    grads = torch.autograd.grad((ours * weights).sum(), params)
    ref_grads = torch.autograd.grad((ref * weights).sum(), params)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_edge_conv_algebra_holds_for_other_group_counts(groups):
    conv = EdgeConv(12, 6, groups=groups).double()
    y = torch.randn(1, 12, 30, dtype=torch.float64)
    idx = dense_knn(y, 5)
    torch.testing.assert_close(conv(y, idx), naive_edge_conv(conv.nn[0], y, idx))


def test_edge_conv_weight_layout_matches_manifest():
    gcn = GCN(320)
    shapes = {k: tuple(v.shape) for k, v in gcn.state_dict().items()}
    assert shapes["graph_conv.gconv.nn.0.weight"] == (320, 160, 1, 1)
    assert shapes["conv1.0.weight"] == (320, 320, 1, 1) and shapes["conv1.1.running_var"] == (320,)


@pytest.mark.parametrize("conv", sorted(GRAPH_CONVS))
def test_each_conv_type_runs_forward_and_backward(conv):
    gcn = GCN(32, kernel_size=4, conv=conv)
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    out = gcn(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, param in gcn.named_parameters():
        assert param.grad is not None, name


@pytest.mark.parametrize("conv", sorted(GRAPH_CONVS))
def test_graph_conv_is_equivariant_to_node_order(conv):
    gcn = GCN(16, kernel_size=5, conv=conv).double().eval()
    y = torch.randn(2, 16, 48, dtype=torch.float64)
    perm = torch.randperm(48)
    out = gcn.graph_conv(y)
    torch.testing.assert_close(gcn.graph_conv(y[:, :, perm]), out[:, :, perm])


def test_gcn_block_is_equivariant_to_spatial_permutations():
    gcn = GCN(16, conv="edge").double().eval()
    x = torch.randn(1, 16, 6, 8, dtype=torch.float64)
    perm = torch.randperm(48)
    x_perm = x.flatten(2)[:, :, perm].reshape(1, 16, 6, 8)
    out = gcn(x).flatten(2)[:, :, perm].reshape(1, 16, 6, 8)
    torch.testing.assert_close(gcn(x_perm), out)


def test_unknown_conv_name_is_rejected():
    with pytest.raises(ValueError, match="unknown graph conv 'gat'"):
        GCN(16, conv="gat")


def test_gcn_runs_under_bf16_autocast_with_the_same_graph():
    gcn = GCN(32, kernel_size=5)
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gcn(x)
    out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    y = torch.randn(2, 16, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(dense_knn(y, 6), dense_knn(y, 6, chunk_size=3))


def test_gin_eps_has_vig_shape_and_vig_state_dicts_load_strictly(tmp_path):
    """ViG's GINConv2d stores ``eps`` as a (1,) parameter: ours saves (1,) and loads such a state dict strictly."""
    gcn = GCN(16, kernel_size=4, conv="gin")
    state = gcn.state_dict()
    assert state["graph_conv.gconv.eps"].shape == (1,)
    torch.save(state, tmp_path / "gin.pt")
    assert torch.load(tmp_path / "gin.pt", weights_only=True)["graph_conv.gconv.eps"].shape == (1,)
    vig_layout = {k: v.clone() for k, v in state.items()}
    vig_layout["graph_conv.gconv.eps"] = torch.tensor([0.25])
    fresh = GCN(16, kernel_size=4, conv="gin")
    result = fresh.load_state_dict(vig_layout, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert fresh.graph_conv.gconv.eps.shape == (1,) and fresh.graph_conv.gconv.eps.item() == 0.25
    # (1 + eps) weights the centre node: eps = 0.25 changes the output
    x = torch.randn(1, 16, 5, 5)
    assert not torch.allclose(fresh.eval()(x), gcn.eval()(x))
    # our earlier 0-d layout still loads (reshaped to (1,))
    legacy = dict(vig_layout, **{"graph_conv.gconv.eps": torch.tensor(0.5)})
    fresh.load_state_dict(legacy, strict=True)
    assert fresh.graph_conv.gconv.eps.shape == (1,) and fresh.graph_conv.gconv.eps.item() == 0.5
