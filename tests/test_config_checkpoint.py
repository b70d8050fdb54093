"""Bad inputs for grpose.config and grpose.checkpoint: the errors name the file, YAML path or key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpose.checkpoint import CheckpointError, load_into, read_state_dict, save_state_dict
from grpose.config import ConfigError, instantiate, load_config
from grpose.diffusion.text_encoder import CLIPTextEncoder
from grpose.diffusion.unet import UNetModel

TINY_UNET = dict(
    model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,), num_heads=2, context_dim=32, num_res_blocks=1
)
TINY_TEXT = dict(width=32, layers=1, heads=2, intermediate_size=64, vocab_size=100)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------------- config


def test_misspelled_param_names_yaml_path_and_parameter(tmp_path):
    yaml = _write(
        tmp_path / "bad.yaml",
        "model:\n  params:\n    unet:\n      target: grpose.diffusion.unet.UNetModel\n"
        "      params:\n        model_chanels: 32\n",
    )
    config = load_config(yaml)
    with pytest.raises(ConfigError) as err:
        instantiate(config.model.params.unet, yaml_path="model.params.unet")
    message = str(err.value)
    assert "model.params.unet.params" in message
    assert "model_chanels" in message
    assert "model_channels" in message  # the accepted names are listed


def test_misspelled_nested_param_names_full_yaml_path(tmp_path):
    yaml = _write(
        tmp_path / "nested.yaml",
        "outer:\n  target: torch.nn.Sequential\n  params: {}\n"
        "unet:\n  target: grpose.diffusion.unet.UNetModel\n  params:\n    context_dimm: 32\n",
    )
    with pytest.raises(ConfigError, match=r"unet\.params.*context_dimm"):
        instantiate(load_config(yaml).unet, yaml_path="unet")


def test_missing_and_unparsable_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    broken = _write(tmp_path / "broken.yaml", "unet: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)


def test_defaults_include_relative_files_mounted_and_overridden(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "models").mkdir()
    _write(tmp_path / "base" / "backbone.yaml", "unet:\n  width: 1\n  depth: 2\ntimesteps: 1000\n")
    _write(tmp_path / "base" / "data.yaml", "dataset:\n  root: a\ndata:\n  path: ${dataset.root}/x.json\n")
    model = _write(
        tmp_path / "models" / "m.yaml",
        "defaults:\n  - ../base/backbone.yaml@model.params\n  - ../base/data.yaml\n"
        "model:\n  params:\n    unet:\n      depth: 3\n",
    )
    config = load_config(model, overrides=["dataset.root=b"])
    assert "defaults" not in config
    assert config.model.params.unet == {"width": 1, "depth": 3}  # the including file wins over what it includes
    assert config.model.params.timesteps == 1000
    assert config.data.path == "b/x.json"


def test_defaults_cycles_and_missing_includes_are_named(tmp_path):
    _write(tmp_path / "a.yaml", "defaults: [b.yaml]\nx: 1\n")
    _write(tmp_path / "b.yaml", "defaults: [a.yaml]\ny: 1\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", "defaults: [gone.yaml]\n")
    with pytest.raises(ConfigError, match=r"gone\.yaml.*included by"):
        load_config(tmp_path / "c.yaml")


def test_bad_target_names_yaml_path():
    with pytest.raises(ConfigError, match=r"vae\.target.*AutoencoderKLX"):
        instantiate({"target": "grpose.diffusion.autoencoder.AutoencoderKLX", "params": {}}, yaml_path="vae")


# ------------------------------------------------------------------------------------------------- checkpoints


def test_missing_weight_file_names_path_config_key_and_what(tmp_path):
    missing = tmp_path / "models" / "v1-5-pruned.ckpt"
    with pytest.raises(CheckpointError) as err:
        read_state_dict(missing, config_key="model.params.sd_ckpt", what="Stable Diffusion 1.5 weights")
    message = str(err.value)
    assert str(missing) in message
    assert "model.params.sd_ckpt" in message
    assert "Stable Diffusion 1.5 weights" in message
    assert "models/README.md" in message


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_truncated_checkpoint_names_file(tmp_path, suffix):
    path = save_state_dict({"w": torch.randn(64, 64), "b": torch.randn(64)}, tmp_path / f"model{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    assert "truncated or corrupt" in str(err.value)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors", ".pth"])
def test_corrupt_checkpoint_names_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\x00\x13this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    state = {"a.weight": torch.randn(3, 4), "pos": torch.arange(5)[None]}
    path = save_state_dict(state, tmp_path / f"rt{suffix}")
    loaded = read_state_dict(path)
    assert set(loaded) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value)


def test_lightning_and_ddp_wrappers_are_unwrapped(tmp_path):
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {"module.x": torch.ones(2)}, "epoch": 3}, path)
    assert list(read_state_dict(path)) == ["x"]


def test_sd2_shaped_state_dict_fails_naming_key_and_both_shapes():
    unet = UNetModel(**TINY_UNET)
    state = unet.state_dict()
    key = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert tuple(state[key].shape) == (32, 32)
    state[key] = torch.zeros(32, 64)  # SD2: cross-attention over a 1024-wide OpenCLIP context instead of 768
    with pytest.raises(CheckpointError) as err:
        load_into(unet, state, source="sd2.ckpt")
    message = str(err.value)
    assert key in message
    assert "(32, 64)" in message and "(32, 32)" in message
    assert "sd2.ckpt" in message


def test_missing_and_unexpected_keys_are_listed():
    unet = UNetModel(**TINY_UNET)
    state = unet.state_dict()
    del state["out.2.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_into(unet, state, source="other.ckpt")
    assert "out.2.weight" in str(err.value) and "extra.weight" in str(err.value)
    report = load_into(unet, state, strict=False)
    assert report.missing == ["out.2.weight"] and report.unexpected == ["extra.weight"]


def test_position_ids_and_model_ema_are_ignored():
    encoder = CLIPTextEncoder(**TINY_TEXT)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    del state["transformer.text_model.embeddings.position_ids"]  # newer transformers files drop it
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(0)
    state["transformer.text_model.final_layer_norm.weight"] = torch.full((32,), 2.0)
    report = load_into(encoder, state, source="sd15.ckpt")
    assert report.ok
    assert "transformer.text_model.embeddings.position_ids" in report.ignored
    assert {"model_ema.decay", "model_ema.num_updates"} <= set(report.ignored)
    assert torch.equal(encoder.transformer.text_model.final_layer_norm.weight, torch.full((32,), 2.0))
    # A file with a differently shaped position_ids (other transformers versions) is no architecture mismatch either.
    other = dict(encoder.state_dict())
    other["transformer.text_model.embeddings.position_ids"] = torch.arange(77)
    report = load_into(encoder, other)
    assert report.ok and "transformer.text_model.embeddings.position_ids" in report.ignored


def test_load_into_meta_module_assigns_tensors():
    with torch.device("meta"):
        encoder = CLIPTextEncoder(**TINY_TEXT)
    real = CLIPTextEncoder(**TINY_TEXT).state_dict()
    del real["transformer.text_model.embeddings.position_ids"]
    load_into(encoder, real)
    assert not any(p.is_meta for p in encoder.parameters())
    assert encoder.tokenize(["a cat"]).device.type == "cpu"  # tokens follow the weights, not the buffer
    torch.testing.assert_close(
        encoder.transformer.text_model.final_layer_norm.bias, real["transformer.text_model.final_layer_norm.bias"]
    )
