"""The model under test: configs and overrides, a random-weight GRPose, a synthetic batch, one step of each kind."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from grpose.config import instantiate, load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/grpose/tiny.yaml"
REAL = ROOT / "configs/grpose/humanart.yaml"
REAL_POSELOSS = ROOT / "configs/grpose/humanart_poseloss.yaml"
CHECKPOINT_OVERRIDES = (
    "model.params.unet.params.use_checkpoint=true",
    "model.params.adapter.params.use_checkpoint=true",
)
# The real configs checkpoint the adapter (as released): "off" must say so explicitly.
NO_CHECKPOINT_OVERRIDES = (
    "model.params.unet.params.use_checkpoint=false",
    "model.params.adapter.params.use_checkpoint=false",
)
POSE_NET_OVERRIDES = (
    "model.params.pose_feature_network.params.checkpoint=null",
    "model.params.pose_feature_network.params.allow_random_init=true",
)
TINY_POSELOSS_OVERRIDES = (
    "model.params.pose_feature_network.target=grpose.pose.features.PoseFeatureNetwork",
    "model.params.pose_feature_network.params.checkpoint=null",
    "model.params.pose_feature_network.params.allow_random_init=true",
    "model.params.pose_feature_network.params.flip=true",
    "model.params.percept_loss_weight=0.5",
)


def build_model(config_paths: Sequence[Path], overrides: Sequence[str], device: torch.device) -> torch.nn.Module:
    """Instantiate the GRPose LightningModule with random weights directly on ``device``.

    Construction runs under ``torch.device(device)``, so the default initialisation of the 1.5 B parameters runs
    on the GPU (seconds) rather than the CPU; buffers made from NumPy are moved by ``.to``. Zero-initialised
    weights (zero convs, UNet ``out``) get small random values so every adapter parameter receives a gradient.
    """
    config = load_config(*config_paths, overrides=list(overrides))
    with torch.device(device):
        model = instantiate(config.model, "model")
    model.to(device)
    if model.pose_feature_network is not None:
        model.pose_feature_network.to(device)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1 and not bool(param.any()):
                param.normal_(0.0, 1e-3)
    return model


def synthetic_batch(batch_size: int, image_size: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """A dataset-shaped batch: jpg/hint (B,H,W,3) in [-1,1] (hint: black with coloured limb boxes), txt, pose."""
    gen = torch.Generator().manual_seed(seed)
    jpg = torch.rand(batch_size, image_size, image_size, 3, generator=gen) * 2 - 1
    hint = torch.full((batch_size, image_size, image_size, 3), -1.0)
    for b in range(batch_size):  # a few bright strokes so the pose masks are not empty
        for _ in range(6):
            y, x = torch.randint(0, image_size * 7 // 8, (2,), generator=gen).tolist()
            hint[b, y : y + image_size // 8, x : x + image_size // 32] = torch.rand(3, generator=gen) * 2 - 1
    pose = torch.rand(batch_size, 10, 17, 3, generator=gen) * image_size
    return {
        "jpg": jpg.to(device),
        "hint": hint.to(device),
        "txt": [f"a photo of a dancer number {i}, high quality" for i in range(batch_size)],
        "pose": pose.to(device),
        "img_path": [f"synthetic/{i:06d}.jpg" for i in range(batch_size)],
    }


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_backward(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> None:
    """compute_losses + backward, under ``autocast``."""
    with autocast(device):
        terms = model.compute_losses(batch)
        loss = sum(terms.values()).mean()
    loss.backward()


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], device: torch.device
) -> None:
    """One optimisation step as Lightning runs it: zero_grad, compute_losses + backward, AdamW step."""
    optimizer.zero_grad(set_to_none=True)
    forward_backward(model, batch, device)
    optimizer.step()
