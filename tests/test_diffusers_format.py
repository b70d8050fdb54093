"""Base models in the diffusers folder format (docs/checkpoints.md §5): a folder written by diffusers' and
transformers' own save_pretrained gives the state dict and the eps of its ldm-layout twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpose.checkpoint import CheckpointError, read_state_dict, save_state_dict
from grpose.config import instantiate, load_config
from grpose.evaluation.model_loading import swap_base_model

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/grpose/tiny.yaml")
FROZEN = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """A random tiny SD (ldm layout) and the same weights saved as a diffusers folder by diffusers itself."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out = tmp_path_factory.mktemp("diffusers")
    config = load_config(TINY)
    torch.manual_seed(0)
    model = instantiate(config.model, "model")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(FROZEN):
                p.copy_(torch.randn_like(p) * 0.05)
    ldm = {k: v for k, v in model.state_dict().items() if k.startswith(FROZEN)}
    unet_params = dict(config.model.params.unet.params)
    unet_params.update(attention_resolutions=list(unet_params["attention_resolutions"]))
    unet_params.update(channel_mult=list(unet_params["channel_mult"]))
    ddconfig = dict(config.model.params.vae.params)
    ddconfig.update(ch_mult=list(ddconfig["ch_mult"]), attn_resolutions=[])
    original = {
        "model": {
            "params": {
                "scale_factor": 0.18215,
                "unet_config": {"params": unet_params},
                "first_stage_config": {"params": {"ddconfig": ddconfig}},
            }
        }
    }
    unet_config = create_unet_diffusers_config_from_ldm(original, ldm)
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(ldm, unet_config), strict=True)
    unet.save_pretrained(out / "sd" / "unet")
    vae_config = create_vae_diffusers_config_from_ldm(original, ldm)
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(ldm, vae_config), strict=True)
    vae.save_pretrained(out / "sd" / "vae")
    text = dict(config.model.params.text_encoder.params)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=text["vocab_size"],
            hidden_size=text["width"],
            num_hidden_layers=text["layers"],
            num_attention_heads=text["heads"],
            max_position_embeddings=text["max_length"],
            intermediate_size=text["intermediate_size"],
            layer_norm_eps=text["layer_norm_eps"],
            hidden_act="quick_gelu",
        )
    )
    # transformers 4 names the keys text_model.*, transformers 5 drops that prefix: follow the installed version
    prefix = "cond_stage_model.transformer." + ("" if "text_model." in next(iter(clip.state_dict())) else "text_model.")
    weights = {k[len(prefix) :]: v for k, v in ldm.items() if k.startswith(prefix)}
    missing, unexpected = clip.load_state_dict(weights, strict=False)
    assert not missing and all(k.endswith("position_ids") for k in unexpected)
    clip.save_pretrained(out / "sd" / "text_encoder")
    save_state_dict(ldm, out / "ldm.safetensors")
    return {"folder": out / "sd", "ldm": out / "ldm.safetensors", "state": ldm, "dir": out}


def test_folder_reads_as_its_ldm_twin(twins):
    converted = read_state_dict(twins["folder"])
    expected = {k for k in twins["state"] if not k.endswith("position_ids")}
    assert set(converted) - {"cond_stage_model.transformer.text_model.embeddings.position_ids"} == expected
    for key in expected:
        assert converted[key].shape == twins["state"][key].shape, key
        assert torch.equal(converted[key], twins["state"][key]), key


def test_folder_as_base_model_gives_the_same_eps(twins):
    config = load_config(TINY)
    models = {}
    for name in ("folder", "ldm"):
        torch.manual_seed(1)
        model = instantiate(config.model, "model").eval()
        swap_base_model(model, str(twins[name]))
        models[name] = model
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 600])
    hint = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        eps = {n: m.apply_model(x, t, m.encode_text(["a person", "two people"]), hint) for n, m in models.items()}
        images = {n: m.decode_latents(x) for n, m in models.items()}
    assert torch.equal(eps["folder"], eps["ldm"])
    assert torch.equal(images["folder"], images["ldm"])


def test_a_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers model folder"):
        read_state_dict(tmp_path)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weight file"):
        read_state_dict(tmp_path)
