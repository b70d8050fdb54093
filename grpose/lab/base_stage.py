"""Lab stage 2: train the text-conditioned UNet (and its text encoder) with the latent-diffusion objective.

The plain LDM loss ||eps - eps_theta(z_t, t, c)||^2 with t ~ U{0..999} on the SD1.5 schedule, latents of the
frozen lab autoencoder (precomputed posterior moments, sampled each step) and ``caption_dropout`` of prompts
replaced by "" so classifier-free guidance works (docs/lab.md §2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grpose.diffusion.autoencoder import AutoencoderKL
from grpose.diffusion.schedule import make_beta_schedule, q_sample, schedule_buffers
from grpose.diffusion.text_encoder import tokenize
from grpose.lab.autoencoder_stage import to_float


@torch.no_grad()
def latent_moments(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, 4, S/8, S/8) of uint8 images (N, S, S, 3) under the frozen autoencoder."""
    vae.eval()
    device = next(vae.parameters()).device
    means, stds = [], []
    for i in range(0, images.shape[0], batch_size):
        posterior = vae.encode(to_float(images[i : i + batch_size]).to(device))
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


class BaseModel(nn.Module):
    """The two trained parts of the lab base model, held together so one optimizer and one EMA cover both."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder


def base_step_fn(
    base: BaseModel,
    means: torch.Tensor,
    stds: torch.Tensor,
    prompts: list[str],
    batch_size: int,
    scale_factor: float,
    caption_dropout: float,
    timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
):
    """The stage's ``step_fn``: latent moments (N, 4, h, w) and the N prompts of the training images."""
    device = means.device
    buffers = {
        k: v.to(device)
        for k, v in schedule_buffers(make_beta_schedule("linear", timesteps, linear_start, linear_end)).items()
    }
    token_ids = tokenize(prompts).to(device)  # (N, 77)
    empty_ids = tokenize([""]).to(device)  # (1, 77)

    def step(_: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        # every random draw on the CPU generator, then moved: the same draws on any device
        index = torch.randint(0, means.shape[0], (batch_size,), generator=generator).to(device)
        sample_noise = torch.randn((batch_size, *means.shape[1:]), generator=generator).to(device)
        z0 = (means[index] + stds[index] * sample_noise) * scale_factor
        drop = (torch.rand(batch_size, generator=generator) < caption_dropout).to(device)
        ids = torch.where(drop[:, None], empty_ids, token_ids[index])  # (B, 77)
        t = torch.randint(0, timesteps, (batch_size,), generator=generator).to(device)
        noise = torch.randn(z0.shape, generator=generator).to(device)
        z_t = q_sample(z0, t, noise, buffers["sqrt_alphas_cumprod"], buffers["sqrt_one_minus_alphas_cumprod"])
        eps = base.unet(z_t, t, base.text_encoder(ids))
        return {"mse": F.mse_loss(eps, noise)}

    return step
