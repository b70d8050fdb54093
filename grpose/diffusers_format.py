"""Base models in the diffusers folder format, converted to our (ldm) key layout on load (docs/checkpoints.md §5).

Most SD1.5 fine-tunes are published as a folder with ``unet/``, ``vae/`` and ``text_encoder/`` (each a
``config.json`` and ``diffusion_pytorch_model.safetensors`` / ``model.safetensors``, or the ``.bin`` pickles).
``read_diffusers_folder`` returns the state dict an ldm ``v1-5-pruned`` file would give (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.*``), so every place that accepts an SD1.5 file accepts the
folder. Renaming only, plus the VAE attention's linear weights as 1x1 convs; diffusers is not needed at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from grpose.checkpoint import CheckpointError

WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}
RESNET_NAMES = {  # diffusers ResnetBlock2D -> ldm ResBlock (UNet)
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION_NAMES = {  # diffusers Attention (new and old names) -> ldm AttnBlock
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}


def is_diffusers_folder(path: str | Path) -> bool:
    return (Path(path) / "unet" / "config.json").is_file()


def _read_part(folder: Path, part: str, map_location: Any) -> tuple[dict[str, torch.Tensor], dict] | None:
    sub = folder / part
    if not sub.is_dir():
        return None
    from grpose.checkpoint import read_state_dict

    for name in WEIGHT_FILES[part]:
        if (sub / name).is_file():
            config = json.loads((sub / "config.json").read_text()) if (sub / "config.json").is_file() else {}
            return read_state_dict(sub / name, map_location=map_location), config
    raise CheckpointError(f"{sub}: no weight file ({' or '.join(WEIGHT_FILES[part])})")


def _rename(key: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    return key


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` keys -> ldm ``UNetModel`` keys (SD1.x/2.x layout)."""
    per_level = int(config.get("layers_per_block", 2)) + 1  # ResBlocks of a level plus its Downsample slot
    out: dict[str, torch.Tensor] = {}
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for key, value in state_dict.items():
        parts = key.split(".")
        new = None
        if parts[0] == "down_blocks":
            level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{per_level * level + j + 1}.0.{_rename(rest, RESNET_NAMES)}"
            elif kind == "attentions":
                new = f"input_blocks.{per_level * level + j + 1}.1.{rest}"
            elif kind == "downsamplers":  # downsamplers.0.conv -> input_blocks.N.0.op
                new = f"input_blocks.{per_level * (level + 1)}.0.op.{'.'.join(parts[5:])}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * j}.{_rename(rest, RESNET_NAMES)}"
            elif kind == "attentions":
                new = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"output_blocks.{per_level * level + j}.0.{_rename(rest, RESNET_NAMES)}"
            elif kind == "attentions":
                new = f"output_blocks.{per_level * level + j}.1.{rest}"
            elif kind == "upsamplers":  # after the last ResBlock (and its attention, when the level has one)
                has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state_dict)
                new = f"output_blocks.{per_level * level + per_level - 1}.{2 if has_attention else 1}.{rest}"
        else:
            renamed = _rename(key, fixed)
            new = renamed if renamed != key else None
        if new is None:
            raise CheckpointError(f"unet: no ldm name for diffusers key {key!r} (not an SD1.x-style UNet?)")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` keys -> ldm ``AutoencoderKL`` keys (attention projections as 1x1 convs)."""
    levels = len(config.get("block_out_channels", (128, 256, 512, 512)))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        side = parts[0]  # encoder | decoder | quant_conv | post_quant_conv
        new = key
        if side in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
            level, kind = int(parts[2]), parts[3]
            ldm_level = level if side == "encoder" else levels - 1 - level
            group = "down" if side == "encoder" else "up"
            if kind == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.{group}.{ldm_level}.block.{parts[4]}.{rest}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                new = f"{side}.{group}.{ldm_level}.{'downsample' if kind == 'downsamplers' else 'upsample'}."
                new += ".".join(parts[5:])
        elif side in ("encoder", "decoder") and parts[1] == "mid_block":
            kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"{side}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                new = f"{side}.mid.attn_1.{_rename(rest, VAE_ATTENTION_NAMES)}"
                if value.dim() == 2:  # Linear (C, C) -> Conv2d 1x1 (C, C, 1, 1)
                    value = value[:, :, None, None]
        elif side in ("encoder", "decoder") and parts[1] == "conv_norm_out":
            new = f"{side}.norm_out.{'.'.join(parts[2:])}"
        out["first_stage_model." + new] = value
    return out


def text_encoder_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModel`` keys -> ``cond_stage_model.transformer.text_model.*``: transformers 4 files
    say ``text_model.embeddings...``, transformers 5 writes ``embeddings...`` without the wrapper's name."""
    return {
        "cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in state_dict.items()
    }


def read_diffusers_folder(path: str | Path, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The ldm-layout state dict of a diffusers SD folder (the parts present among unet, vae, text_encoder)."""
    folder = Path(path)
    out: dict[str, torch.Tensor] = {}
    unet = _read_part(folder, "unet", map_location)
    if unet is not None:
        out.update(unet_to_ldm(*unet))
    vae = _read_part(folder, "vae", map_location)
    if vae is not None:
        out.update(vae_to_ldm(*vae))
    text = _read_part(folder, "text_encoder", map_location)
    if text is not None:
        out.update(text_encoder_to_ldm(text[0]))
    return out
