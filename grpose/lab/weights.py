"""Lab weight files: fp16 safetensors in the layout real weights use, with the rebuild command in the metadata."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


def export_weights(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Write ``state_dict`` as safetensors: floating tensors in fp16 (the lab's weights are small and smooth
    enough that fp16 changes no reported number), others unchanged; ``metadata`` (str -> str) goes in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in state_dict.items()
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=dict(metadata))
    tmp.replace(path)
    return path


def prefixed(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every key under ``prefix`` (e.g. ``first_stage_model.``)."""
    return {prefix + k: v for k, v in module.state_dict().items()}
