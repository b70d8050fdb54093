"""Slim checkpoints: only the trained weights, to be joined with any SD1.5-layout base (docs/checkpoints.md §4).

A training checkpoint holds the frozen SD1.5 parts too (about 9 GB with the optimizer); the export keeps the keys
of ``GRPoseModel.trainable_state_modules`` (the adapter, plus the UNet decoder when ``sd_locked: false``) in a
chosen dtype, as safetensors whose metadata carries the resolved config. Loading joins it with a base file: the
base gives every other key, strictly, so exporting in the training dtype reproduces the same images bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from grpose.checkpoint import CheckpointError, load_into, read_state_dict

FORMAT = "grpose-trained-weights"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def trainable_prefixes(model) -> tuple[str, ...]:
    return tuple(model.trainable_state_modules())


def export_trained_weights(
    model, state_dict: Mapping[str, torch.Tensor], out: str | Path, dtype: str, metadata: Mapping[str, str]
) -> Path:
    """Write the trainable keys of ``state_dict`` (a checkpoint of ``model``'s config) to ``out`` in ``dtype``."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    prefixes = trainable_prefixes(model)
    expected = {k for k in model.state_dict() if k.startswith(prefixes)}
    missing = sorted(expected - set(state_dict))
    if missing:
        raise CheckpointError(f"the checkpoint lacks trained weights of this config, e.g. {missing[:3]}")
    tensors = {
        k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous().cpu()
        for k, v in state_dict.items()
        if k in expected
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "dtype": dtype, **metadata})
    tmp.replace(out)
    return out


def read_export_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata of an exported file, or None when ``path`` is not one (any other checkpoint)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # a corrupt file: the regular reader reports it with its own message
        return None
    return meta if meta.get("format") == FORMAT else None


def load_trained_weights_with_base(model, trained_path: str | Path, base_path: str | Path | None) -> str:
    """Load an exported file plus the base model it needs into ``model`` (strict on every key); returns a summary.

    Floating tensors are cast to the model's dtype, so an fp16 export loads into an fp32 model (and then
    reproduces images only up to that rounding).
    """
    if base_path is None:
        raise CheckpointError(
            f"{trained_path} holds only trained weights (scripts/export_adapter.py): give the SD1.5-layout base "
            "model they go with as --base_model"
        )
    prefixes = trainable_prefixes(model)
    base = read_state_dict(base_path, config_key="--base_model", what="an SD1.5-layout checkpoint")
    trained = read_state_dict(trained_path)
    foreign = sorted(k for k in trained if not k.startswith(prefixes))
    if foreign:
        raise CheckpointError(f"{trained_path}: keys outside this config's trained modules, e.g. {foreign[:3]}")
    frozen = {k: v for k, v in base.items() if not k.startswith(prefixes)}
    own = model.state_dict()
    cast = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in trained.items()}
    merged = {**frozen, **cast}
    report = load_into(model, merged, strict=True, ignore=("mmpose_model.",), source=f"{base_path} + {trained_path}")
    return report.summary()
