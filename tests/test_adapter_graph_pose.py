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


def _release_layout(adapter: GraphPoseAdapter, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict as the release saves it for this config: ours plus every pose-encoder stage, used or not."""
    state = {prefix + k: v.clone() for k, v in adapter.state_dict().items()}
    for key, (shape, _) in adapter.unused_checkpoint_keys().items():
        state[prefix + key] = torch.randn(shape)
    return state


def test_fewer_levels_release_layout_is_the_full_pose_encoder():
    """pgi_levels_12 ablation at real size: our keys plus the declared unused ones are exactly the release's
    pose encoder (which the release builds with all four stages whatever inject_layers says)."""
    config = load_config(ROOT / "configs/grpose/humanart.yaml", ROOT / "configs/grpose/ablations/pgi_levels_12.yaml")
    assert list(config.model.params.adapter.params.inject_layers) == [1, 4]
    with torch.device("meta"):
        adapter = instantiate(config.model.params.adapter)
    ours = {k: tuple(v.shape) for k, v in adapter.state_dict().items() if k.startswith("pose_encoder.")}
    unused = {k: shape for k, (shape, _) in adapter.unused_checkpoint_keys().items()}
    expected = {k: v for k, v in read_manifest("control_model.").items() if k.startswith("pose_encoder.")}
    assert set(ours).isdisjoint(unused) and {**ours, **unused} == expected
    assert sorted(unused) == [
        f"pose_encoder.{part}.{level}{sub}.{p}"
        for part, sub in (("extractors", ".0"), ("zero_convs", ""))
        for level in (2, 3)
        for p in ("bias", "weight")
    ]


@pytest.mark.parametrize("inject_layers", ["[1,4]", "[4]", "[]"])
def test_fewer_levels_release_checkpoint_loads_strictly_reporting_unused_stages(inject_layers):
    from grpose.checkpoint import CheckpointError, load_into

    _, adapter = tiny_parts(inject_layers=inject_layers)
    state = _release_layout(adapter)
    unused = adapter.unused_checkpoint_keys()
    assert unused  # tiny has 4 levels; none of these configs uses all of them
    _, fresh = tiny_parts(inject_layers=inject_layers)
    report = load_into(fresh, state, strict=True, source="release.ckpt")
    assert report.ok and set(unused) <= set(report.ignored) and set(report.reasons) == set(unused)
    assert all(f"inject_layers={adapter.inject_layers}" in why for why in report.reasons.values())
    assert "does not use" in report.summary() and next(iter(unused)) in report.summary()
    for key, value in adapter.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    # a declared key with another shape is another architecture, not an unused stage
    key, (shape, _) = next(iter(unused.items()))
    bad = dict(state, **{key: torch.zeros(shape[0] + 1, *shape[1:])})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_into(fresh, bad, strict=True)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_into(fresh, dict(state, **{"pose_encoder.extractors.9.0.weight": torch.zeros(1)}), strict=True)


def test_fewer_levels_release_checkpoint_loads_into_the_whole_model():
    from grpose.checkpoint import load_into

    config = load_config(TINY, ROOT / "configs/grpose/ablations/pgi_levels_12.yaml")
    model = instantiate(config.model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, (shape, _) in model.control_model.unused_checkpoint_keys().items():
        state["control_model." + key] = torch.randn(shape)
    report = load_into(model, state, strict=True, ignore=("mmpose_model.",), source="release.ckpt")
    assert report.ok and "control_model.pose_encoder.extractors.2.0.weight" in report.reasons
