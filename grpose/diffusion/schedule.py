"""DDPM noise schedule: beta schedules, the 12 ldm schedule buffers, forward noising and x0 prediction."""

from __future__ import annotations

import numpy as np
import torch

SCHEDULE_BUFFER_NAMES: tuple[str, ...] = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def make_beta_schedule(
    schedule: str = "linear", n_timestep: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
) -> np.ndarray:
    """Betas in float64 (ldm ``make_beta_schedule``); SD's "linear" is linspace(sqrt(start), sqrt(end), n)**2."""
    if schedule == "linear":
        betas = np.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=np.float64) ** 2
    elif schedule == "linear_plain":
        betas = np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    elif schedule == "sqrt":
        betas = np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64) ** 0.5
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; expected 'linear', 'linear_plain' or 'sqrt'")
    return betas


def schedule_buffers(betas: np.ndarray | torch.Tensor, v_posterior: float = 0.0) -> dict[str, torch.Tensor]:
    """The ldm ``register_schedule`` buffers (DDPM, Ho et al. 2020, Eq. 4, 7) in float64, returned as float32."""
    betas = np.asarray(betas.detach().cpu().numpy() if isinstance(betas, torch.Tensor) else betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = (1 - v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (
        1.0 - alphas_cumprod
    ) + v_posterior * betas
    values = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    }
    return {name: torch.tensor(values[name], dtype=torch.float32) for name in SCHEDULE_BUFFER_NAMES}


def extract(a: torch.Tensor, t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Gather ``a[t]`` for a batch of timesteps ``t`` (B,) and shape it (B, 1, ..., 1) to broadcast over ``shape``."""
    out = a.to(t.device).gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(shape) - 1)))


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    sqrt_alphas_cumprod: torch.Tensor,
    sqrt_one_minus_alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """Forward diffusion q(x_t | x_0) (DDPM Eq. 4): sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    return (
        extract(sqrt_alphas_cumprod, t, x0.shape).to(x0.dtype) * x0
        + extract(sqrt_one_minus_alphas_cumprod, t, x0.shape).to(x0.dtype) * noise
    )


def predict_x0_from_eps(
    x_t: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    sqrt_recip_alphas_cumprod: torch.Tensor,
    sqrt_recipm1_alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """x0 estimate from an eps prediction (DDPM Eq. 15): x_t / sqrt(a_t) - sqrt(1/a_t - 1) eps."""
    return (
        extract(sqrt_recip_alphas_cumprod, t, x_t.shape).to(x_t.dtype) * x_t
        - extract(sqrt_recipm1_alphas_cumprod, t, x_t.shape).to(x_t.dtype) * eps
    )
