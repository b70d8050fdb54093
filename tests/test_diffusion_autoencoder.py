"""AutoencoderKL: numerical parity with diffusers' AutoencoderKL (ldm conversion), posterior, checkpointed decode."""

from __future__ import annotations

import pytest
import torch

from grpose.diffusion.autoencoder import AutoencoderKL

TINY = dict(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, embed_dim=4, z_channels=4, resolution=64)


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.05)


@pytest.fixture(scope="module")
def vae_pair():
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    torch.manual_seed(0)
    ours = AutoencoderKL(**TINY).eval()
    _randomize(ours)
    checkpoint = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 64,
        "in_channels": 3,
        "out_ch": 3,
        "ch": TINY["ch"],
        "ch_mult": list(TINY["ch_mult"]),
        "num_res_blocks": TINY["num_res_blocks"],
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    original_config = {
        "model": {"params": {"scale_factor": 0.18215, "first_stage_config": {"params": {"ddconfig": ddconfig}}}}
    }
    config = create_vae_diffusers_config_from_ldm(original_config, checkpoint)
    reference = DiffusersAutoencoderKL(**config).eval()
    reference.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config), strict=True)
    return ours, reference


def test_encode_matches_diffusers(vae_pair):
    ours, reference = vae_pair
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        posterior = ours.encode(x)
        posterior_ref = reference.encode(x).latent_dist
    assert posterior.mean.shape == (2, 4, 4, 4)  # latent factor 8
    assert (posterior.mean - posterior_ref.mean).abs().max().item() <= 1e-4
    assert (posterior.std - posterior_ref.std).abs().max().item() <= 1e-4
    torch.testing.assert_close(posterior.mode(), posterior.mean)
    gen = torch.Generator().manual_seed(3)
    sample = posterior.sample(generator=gen)
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(3))
    expected = posterior.mean + posterior.std * noise
    torch.testing.assert_close(sample, expected)


def test_decode_matches_diffusers(vae_pair):
    ours, reference = vae_pair
    z = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = ours.decode(z)
        x_ref = reference.decode(z).sample
    assert x.shape == (2, 3, 16, 16)
    assert (x - x_ref).abs().max().item() <= 1e-4


def test_checkpointed_decode_is_differentiable_and_equal(vae_pair):
    ours, _ = vae_pair
    ckpt = AutoencoderKL(**TINY, use_checkpoint=True).eval()
    ckpt.load_state_dict(ours.state_dict())
    ckpt.requires_grad_(False)  # frozen VAE inside the pose loss: gradients must still reach z
    z = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    grads = []
    for model in (ours, ckpt):
        zz = z.clone().requires_grad_(True)
        model.decode(zz).square().mean().backward()
        grads.append(zz.grad)
    assert grads[1] is not None and grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
