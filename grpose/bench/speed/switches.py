"""Turning single speed switches on and off on a built model, and the relative error the numerics rows report."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def set_knn(model: torch.nn.Module, backend: str, precision: str = "tf32x3") -> None:
    """The adapter's kNN backend, and the Triton kernel's default precision."""
    model.configure_speed(knn_backend=backend)
    import grpose.graph.knn as knn

    knn.DEFAULT_TRITON_PRECISION = precision


def set_adapter_checkpoint(model: torch.nn.Module, flag: bool) -> None:
    """Activation checkpointing of every adapter block."""
    for module in model.control_model.modules():
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = flag


def undo_channels_last(model: torch.nn.Module) -> None:
    """Back to contiguous (NCHW) weights after a channels-last variant that did not pay."""
    for module in (model.unet, model.control_model, model.first_stage_model):
        module.to(memory_format=torch.contiguous_format)
    model.channels_last = False
