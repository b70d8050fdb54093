"""Lab stage 1: train the KL autoencoder (ldm ``AutoencoderKL``) from scratch on lab images (docs/lab.md §2).

Objective as ldm's first stage without the perceptual and adversarial terms: L1 reconstruction plus
``kl_weight`` · KL(q(z|x) || N(0, I)). Trained on random crops (the network is fully convolutional), which is
4x cheaper per image than whole 128-px images and sees the same local statistics.

``decoder_only`` fine-tunes the decoder of a trained autoencoder with the encoder frozen (as Stable Diffusion's
ft-MSE VAE was made): the latents, the latent scale factor and so every UNet trained on them stay valid, while the
reconstructions sharpen (docs/lab.md §4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grpose.diffusion.autoencoder import AutoencoderKL, DiagonalGaussianDistribution


def kl_divergence(posterior: DiagonalGaussianDistribution) -> torch.Tensor:
    """KL(N(mean, var) || N(0, I)) summed over latent dimensions, per sample (ldm's ``kl()``)."""
    return 0.5 * torch.sum(posterior.mean**2 + posterior.var - 1.0 - posterior.logvar, dim=(1, 2, 3))


def random_crops(images: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``crop``-px windows (and horizontal flips) of uint8 (B, S, S, 3) -> float (B, 3, c, c) in [-1, 1]."""
    b, s = images.shape[0], images.shape[1]
    corners = torch.randint(0, s - crop + 1, (b, 2), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    out = []
    for image, (top, left), flip in zip(images, corners.tolist(), flips.tolist()):
        window = image[top : top + crop, left : left + crop]  # (c, c, 3)
        out.append(window.flip(1) if flip else window)
    return torch.stack(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, c, c)


def freeze_encoder(vae: AutoencoderKL) -> None:
    """Freeze everything that makes the latents (encoder and quant_conv) for ``decoder_only`` fine-tuning."""
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)


def autoencoder_step_fn(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int, crop: int, kl_weight: float, decoder_only: bool = False
):
    """The stage's ``step_fn``: images uint8 (N, S, S, 3). ``decoder_only``: the encoder runs without gradients
    (``freeze_encoder``) and the loss is the reconstruction alone (the KL term depends on the encoder only)."""

    def step(_: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        device = next(vae.parameters()).device
        x = random_crops(images[index], crop, generator).to(device)  # random draws on the CPU: same on any device
        with torch.set_grad_enabled(not decoder_only):
            posterior = vae.encode(x)
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise)
        terms = {"l1": F.l1_loss(reconstruction, x)}
        if not decoder_only:
            terms["kl"] = kl_weight * kl_divergence(posterior).mean()
        return terms

    return step


@torch.no_grad()
def latent_scale_factor(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> float:
    """1 / std of the posterior-mean latents of ``images`` (LDM Sec. 4.3.2's rescaling; SD1.5 uses 0.18215)."""
    vae.eval()
    device = next(vae.parameters()).device
    latents = [
        vae.encode(to_float(images[i : i + batch_size]).to(device)).mean for i in range(0, len(images), batch_size)
    ]
    return float(1.0 / torch.cat(latents).flatten().std())


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
