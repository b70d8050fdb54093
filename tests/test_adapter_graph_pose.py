"""Graph Pose Adapter on tiny configs: zero init, gradient flow, conv types, layer selection, manifest."""

from pathlib import Path

import pytest
import torch

from grpose.adapter.graph_pose_adapter import GraphPoseAdapter
from grpose.adapter.pgi import PGI
from grpose.config import instantiate, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/grpose/tiny.yaml"
MANIFEST = ROOT / "tests/data/grpose_humanart_state_dict.tsv"


def read_manifest(prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in MANIFEST.read_text().splitlines():
        key, shape, _ = line.split("\t")
        if key.startswith(prefix):
            shapes[key[len(prefix) :]] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return shapes


def tiny_parts(**adapter_overrides):
    config = load_config(TINY, overrides=[f"model.params.adapter.params.{k}={v}" for k, v in adapter_overrides.items()])
    unet = instantiate(config.model.params.unet).requires_grad_(False)
    adapter = instantiate(config.model.params.adapter)
    return unet, adapter


def tiny_inputs(batch: int = 2):
    x = torch.randn(batch, 4, 8, 8)
    t = torch.randint(0, 1000, (batch,))
    context = torch.randn(batch, 77, 32)
    hint = torch.rand(batch, 3, 64, 64) * 2 - 1
    return x, t, context, hint


def randomise_zero_params(module: torch.nn.Module) -> None:
    """Give every all-zero parameter (zero convs, biases) small random values, as after some training."""
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)


def test_real_size_adapter_matches_released_manifest():
    config = load_config(ROOT / "configs/grpose/humanart.yaml")
    with torch.device("meta"):
        adapter = instantiate(config.model.params.adapter)
    ours = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    expected = read_manifest("control_model.")
    assert len(expected) == 474
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert sum(p.numel() for p in adapter.parameters()) == 412_997_248  # 413.00 M, docs/release_behaviours.md §1


@pytest.mark.slow
def test_fresh_adapter_leaves_the_eps_prediction_exactly_unchanged():
    unet, adapter = tiny_parts()
    randomise_zero_params(unet)
    x, t, context, hint = tiny_inputs()
    residuals = adapter(x, t, context, hint)
    assert len(residuals) == unet.num_residuals == 13
    assert all(not r.any() for r in residuals)
    torch.testing.assert_close(unet(x, t, context, control=residuals), unet(x, t, context), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("graph_conv", ["edge", "mr", "sage", "gin"])
def test_gradients_reach_every_trainable_adapter_parameter(graph_conv):
    unet, adapter = tiny_parts(graph_conv=graph_conv)
    randomise_zero_params(unet)
    randomise_zero_params(adapter)
    x, t, context, hint = tiny_inputs()
    eps = unet(x, t, context, control=adapter(x, t, context, hint))
    (eps - torch.randn_like(eps)).square().mean().backward()
    dead = [n for n, p in adapter.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead == []
    assert all(p.grad is None for p in unet.parameters())


def test_only_pgi_levels_get_pose_features_and_no_parameter_is_dead():
    unet, adapter = tiny_parts(inject_layers="[4]")
    assert isinstance(adapter.input_blocks[4][0], PGI) and not isinstance(adapter.input_blocks[1][0], PGI)
    keys = adapter.state_dict().keys()
    assert "pose_encoder.zero_convs.1.weight" in keys and "pose_encoder.zero_convs.0.weight" not in keys
    randomise_zero_params(unet)
    randomise_zero_params(adapter)
    x, t, context, hint = tiny_inputs()
    unet(x, t, context, control=adapter(x, t, context, hint)).square().mean().backward()
    assert [n for n, p in adapter.named_parameters() if p.grad is None] == []


def test_no_pgi_adapter_has_no_pose_encoder():
    _, adapter = tiny_parts(inject_layers="[]")
    assert adapter.pose_encoder is None
    assert len(adapter(*tiny_inputs())) == 13


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(inject_layers=[2]), r"choices are \[1, 4\]"),
        (dict(inject_layers=[1, 1]), "at most once"),
        (dict(inject_channels=[32]), "one pose-feature width per level"),
    ],
)
def test_bad_injection_settings_are_rejected(kwargs, message):
    base = dict(model_channels=32, channel_mult=(1, 2), attention_resolutions=(2,), num_heads=2, context_dim=32)
    base.setdefault("inject_layers", [1, 4])
    base.setdefault("inject_channels", [32, 64])
    with pytest.raises(ValueError, match=message):
        GraphPoseAdapter(**{**base, **kwargs})


def test_pgi_checkpointing_matches_plain_run_and_updates_batchnorm_stats_once():
    torch.manual_seed(3)
    plain = PGI(32, 64, 16, out_channels=64, k=4)
    randomise_zero_params(plain)
    ckpt = PGI(32, 64, 16, out_channels=64, k=4, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, emb, pose = torch.randn(2, 32, 6, 6), torch.randn(2, 64), torch.randn(2, 16, 6, 6)
    for block in (plain, ckpt):
        block(x, emb, pose).square().sum().backward()
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert int(ckpt.gnn.conv1[1].num_batches_tracked) == 1
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_hint_of_the_wrong_size_is_rejected_clearly():
    _, adapter = tiny_parts()
    x, t, context, hint = tiny_inputs()
    with pytest.raises(ValueError, match=r"expected \(B, C, 64, 64\)"):
        adapter(x, t, context, hint[:, :, :32, :32])
