"""DDIM sampler (Song et al. 2021) with classifier-free guidance, as ldm's DDIMSampler with "uniform" steps."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """ldm "uniform" DDIM timesteps ``c·i + 1`` with ``c = T // num_steps`` (e.g. 1, 21, ..., 981 for 50 steps).

    Exactly ``num_steps`` of them: ldm's ``arange(0, T, c) + 1`` gives one more step, and an index T that does
    not exist, when ``num_steps`` does not divide T (e.g. 3 steps); for divisors the two are identical.
    """
    if not 0 < num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    return np.arange(num_steps) * (num_train_timesteps // num_steps) + 1


def ddim_coefficients(
    alphas_cumprod: np.ndarray | torch.Tensor, timesteps: np.ndarray, eta: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a_t, a_prev, sigma_t) per DDIM step in ascending-timestep order (DDIM Eq. 12 and 16).

    a_prev of the first step (smallest timestep) is ``alphas_cumprod[0]``, not 1, as in ldm.
    """
    if isinstance(alphas_cumprod, torch.Tensor):
        alphas_cumprod = alphas_cumprod.detach().cpu().numpy()
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    a_t = alphas_cumprod[timesteps]
    a_prev = np.concatenate([alphas_cumprod[:1], alphas_cumprod[timesteps[:-1]]])
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    return a_t, a_prev, sigma


@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    context: torch.Tensor,
    alphas_cumprod: np.ndarray | torch.Tensor,
    num_steps: int = 50,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    uncond_context: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run DDIM from noise ``x_T`` (B, C, h, w) to an x0 latent.

    ``denoiser(x, t, context)`` returns eps; ``t`` is a LongTensor (N,). With ``guidance_scale != 1`` and
    ``uncond_context``, each step makes one batched call on ``cat[uncond, cond]`` and uses
    ``eps = eps_u + s (eps_c - eps_u)`` (Ho & Salimans 2022). ``callback(i, t, x_prev, pred_x0)`` is called after
    every step. All coefficients are Python floats computed before the loop, so the loop never syncs the device.
    """
    timesteps = ddim_timesteps(num_steps, len(alphas_cumprod))
    a_ts, a_prevs, sigmas = ddim_coefficients(alphas_cumprod, timesteps, eta)
    use_cfg = guidance_scale != 1.0 and uncond_context is not None
    if use_cfg:
        cfg_context = torch.cat([uncond_context, context])
    batch = x_T.shape[0]
    x = x_T
    steps = range(len(timesteps) - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="DDIM", total=len(timesteps))
    for i, index in enumerate(steps):
        step = int(timesteps[index])
        a_t, a_prev, sigma = float(a_ts[index]), float(a_prevs[index]), float(sigmas[index])
        if use_cfg:
            t = torch.full((2 * batch,), step, device=x.device, dtype=torch.long)
            eps_u, eps_c = denoiser(torch.cat([x, x]), t, cfg_context).chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        else:
            t = torch.full((batch,), step, device=x.device, dtype=torch.long)
            eps = denoiser(x, t, context)
        pred_x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
        dir_xt = (1.0 - a_prev - sigma**2) ** 0.5 * eps
        x = a_prev**0.5 * pred_x0 + dir_xt
        if sigma > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + sigma * noise
        if callback is not None:
            callback(i, step, x, pred_x0)
    return x
