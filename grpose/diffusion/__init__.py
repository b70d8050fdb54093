"""Stable Diffusion 1.5 parts: UNet, VAE, CLIP text encoder, noise schedule and DDIM sampler."""
