"""Initial weights from a base model: SD1.5 (or the lab's base) parts into a GRPose model (docs/checkpoints.md).

A base state dict in the ldm layout gives the frozen UNet, VAE and text encoder (every key, strictly) and the
adapter's encoder copy: each ``control_model.*`` key whose ``model.diffusion_model.*`` twin has the same shape is
copied, the rest keep their fresh initialisation (paper Sec. 3.2; ControlNet's initialisation).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from grpose.checkpoint import DEFAULT_IGNORED_PATTERNS, CheckpointError

PART_PREFIXES: dict[str, str] = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.",
    "adapter": "control_model.",
}
SD_PARTS: tuple[str, ...] = ("unet", "vae", "text_encoder")


def shape_of(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """A tensor's shape without reading it when the mapping can tell (lazy safetensors mappings have ``shape``)."""
    return sd.shape(key) if hasattr(sd, "shape") and not isinstance(sd, dict) else tuple(sd[key].shape)


def _ignored(key: str) -> bool:
    return any(key.startswith(p) or p in key for p in DEFAULT_IGNORED_PATTERNS)


def check_sd_parts(parts: Mapping[str, nn.Module], sd: Mapping[str, torch.Tensor]) -> None:
    """Fail naming the first keys of UNet / VAE / text encoder that the SD file lacks or has in another shape."""
    problems = []
    for name in SD_PARTS:
        prefix = PART_PREFIXES[name]
        for key, value in parts[name].state_dict().items():
            full = prefix + key
            if full not in sd:
                if not _ignored(full):
                    problems.append(f"{full}: missing from the file (model {tuple(value.shape)})")
            elif shape_of(sd, full) != tuple(value.shape):
                problems.append(f"{full}: file {shape_of(sd, full)} vs model {tuple(value.shape)}")
    if problems:
        shown = "\n  ".join(problems[:10])
        raise CheckpointError(
            f"the SD checkpoint does not fit the config's backbone: {len(problems)} key(s) missing or mismatched, "
            f"first ones:\n  {shown}\nIs it a checkpoint of another architecture (e.g. SD2 instead of SD1.5), or "
            "does the config's unet/vae/text_encoder block not match the file (configs/sd15.yaml)?"
        )


def plan_adapter_init(
    adapter_shapes: Mapping[str, tuple[int, ...]], sd_shape: Mapping[str, tuple[int, ...]]
) -> tuple[list[str], list[str]]:
    """(copied, fresh) adapter keys: copied iff ``model.diffusion_model.<key>`` exists with the same shape."""
    copied, fresh = [], []
    for key, shape in adapter_shapes.items():
        twin = PART_PREFIXES["unet"] + key
        (copied if sd_shape.get(twin) == tuple(shape) else fresh).append(key)
    return copied, fresh


def init_from_base(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> dict[str, int]:
    """Load a base model's state dict into a built GRPose/ControlNet model: UNet, VAE and text encoder strictly
    (only ignorable keys such as ``position_ids`` may be absent), the adapter's twins of UNet keys copied.

    Returns the number of keys copied per part. Raises CheckpointError naming the first mismatching keys.
    """
    parts = {"unet": model.unet, "vae": model.first_stage_model, "text_encoder": model.cond_stage_model}
    check_sd_parts(parts, sd)
    copied: dict[str, int] = {}
    with torch.no_grad():
        for name, module in parts.items():
            prefix = PART_PREFIXES[name]
            state = module.state_dict()
            for key, value in state.items():
                if prefix + key in sd:
                    value.copy_(sd[prefix + key])
            copied[name] = sum(prefix + k in sd for k in state)
        adapter_state = model.control_model.state_dict()
        unet = PART_PREFIXES["unet"]
        shapes = {unet + k: shape_of(sd, unet + k) for k in adapter_state if unet + k in sd}
        to_copy, _ = plan_adapter_init({k: tuple(v.shape) for k, v in adapter_state.items()}, shapes)
        for key in to_copy:
            adapter_state[key].copy_(sd[unet + key])
    copied["adapter"] = len(to_copy)
    if not sum(copied.values()):
        raise CheckpointError(f"{source}: no key of the base model was found")
    return copied
