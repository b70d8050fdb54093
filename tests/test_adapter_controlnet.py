"""ControlNet baseline and the adapter configs: layout, zero init, residual count, config merges."""

from pathlib import Path

import pytest
import torch

from grpose.adapter.controlnet import ControlNet
from grpose.adapter.graph_pose_adapter import GraphPoseAdapter
from grpose.config import instantiate, load_config

ROOT = Path(__file__).resolve().parents[1]
HUMANART = ROOT / "configs/grpose/humanart.yaml"


@pytest.mark.slow
def test_tiny_controlnet_is_zero_at_init_and_trains():
    config = load_config(ROOT / "configs/controlnet/tiny.yaml")
    unet = instantiate(config.model.params.unet).requires_grad_(False)
    net = instantiate(config.model.params.adapter)
    assert isinstance(net, ControlNet)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 900]), torch.randn(2, 77, 32)
    hint = torch.rand(2, 3, 64, 64)
    residuals = net(x, t, context, hint * 2 - 1)
    assert len(residuals) == 13 and all(not r.any() for r in residuals)
    with torch.no_grad():
        for p in list(unet.parameters()) + list(net.parameters()):
            if not p.any():
                p.normal_(0, 0.05)
    unet(x, t, context, control=net(x, t, context, hint)).square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()] == []


def test_real_size_controlnet_has_the_v1_layout():
    config = load_config(ROOT / "configs/controlnet/humanart.yaml")
    with torch.device("meta"):
        net = instantiate(config.model.params.adapter)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["input_hint_block.0.weight"] == (16, 3, 3, 3)
    assert shapes["input_hint_block.14.weight"] == (320, 256, 3, 3)
    assert shapes["zero_convs.11.0.weight"] == (1280, 1280, 1, 1) and "zero_convs.12.0.weight" not in shapes
    assert shapes["middle_block_out.0.weight"] == (1280, 1280, 1, 1)
    assert sum(p.numel() for p in net.parameters()) == 361_279_120


ABLATIONS = {
    "conv_mr": ("graph_conv", "mr"),
    "conv_sage": ("graph_conv", "sage"),
    "conv_gin": ("graph_conv", "gin"),
    "k4": ("k", 4),
    "k16": ("k", 16),
    "pgi_levels_12": ("inject_layers", [1, 4]),
    "no_pgi": ("inject_layers", []),
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_configs_merge_over_humanart_and_build(name):
    config = load_config(HUMANART, ROOT / f"configs/grpose/ablations/{name}.yaml")
    key, value = ABLATIONS[name]
    params = config.model.params.adapter.params
    assert params[key] == value
    assert params.model_channels == 320 and config.data.params.batch_size == 6
    with torch.device("meta"):
        adapter = instantiate(config.model.params.adapter)
    assert isinstance(adapter, GraphPoseAdapter)


def test_variant_configs_only_change_what_they_should():
    base = load_config(HUMANART)
    poseloss = load_config(HUMANART, ROOT / "configs/grpose/humanart_poseloss.yaml")
    assert poseloss.model.params.percept_loss_weight == 0.5
    assert poseloss.model.params.pose_feature_network.params.flip is True
    assert poseloss.model.params.adapter == base.model.params.adapter
    laion = load_config(HUMANART, ROOT / "configs/grpose/laionhuman.yaml")
    assert laion.data.params.train.params.mapping_file == "data/LAION-Human/mapping_file_training.json"
    assert laion.model == base.model
    controlnet = load_config(ROOT / "configs/controlnet/humanart.yaml")
    assert controlnet.model.params.unet == base.model.params.unet and controlnet.data == base.data


@pytest.mark.parametrize(
    ("configs", "backbone"),
    [
        (["configs/grpose/humanart.yaml", "configs/controlnet/humanart.yaml"], "configs/sd15.yaml"),
        (["configs/grpose/tiny.yaml", "configs/controlnet/tiny.yaml"], "configs/sd15_tiny.yaml"),
    ],
)
def test_backbone_blocks_equal_the_sd15_configs(configs, backbone):
    reference = load_config(ROOT / backbone)
    for path in configs:
        params = load_config(ROOT / path).model.params
        for part in ("unet", "vae", "text_encoder"):
            assert params[part] == reference[part], f"{path}: model.params.{part} differs from {backbone}"
        adapter, unet = params.adapter.params, params.unet.params
        for key in ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "context_dim"):
            assert adapter[key] == unet[key], f"{path}: adapter {key} differs from the UNet's"
