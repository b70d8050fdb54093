"""Make the initial GRPose / ControlNet checkpoint from an SD1.5 file (docs/checkpoints.md §3).

Usage: python prepare_weights.py SD_CKPT CONFIG OUT  (OUT ends in .ckpt or .safetensors)

The output holds the composite state dict that ``train.py --control_ckpt`` loads strictly:
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), ``cond_stage_model.*`` (CLIP text) copied from SD,
``control_model.*`` (the adapter: every key whose ``model.diffusion_model.*`` twin has the same shape is copied, the
rest keep their fresh init and are listed) and the DDPM schedule buffers. Memory: the SD file is memory-mapped
(torch ``mmap=True`` / safetensors lazy reads); UNet, VAE and text encoder are built on the meta device and take the
file's tensors directly, only the adapter is initialised for real, so no part of the 1.5 B parameters exists twice.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpose.checkpoint import CheckpointError, read_state_dict, save_state_dict
from grpose.config import instantiate, load_config
from grpose.diffusion.schedule import make_beta_schedule, schedule_buffers
from grpose.init_weights import PART_PREFIXES, SD_PARTS, check_sd_parts, plan_adapter_init, shape_of
from grpose.trust import add_trust_argument, honours_trust_flag


class SafetensorsStateDict(Mapping):
    """Read-only mapping over a .safetensors file that loads a tensor only when it is asked for."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt", device="cpu")
        self._keys = list(self._file.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())


def open_state_dict(path: str | Path) -> Mapping[str, torch.Tensor]:
    """The SD file as a mapping without reading it into memory (lazy safetensors, mmap-ed torch file)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        try:
            return SafetensorsStateDict(path)
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"could not read {path} as safetensors (truncated or corrupt?): {err}") from err
    return read_state_dict(path, what="Stable Diffusion 1.5 checkpoint (ldm key layout), e.g. v1-5-pruned.ckpt")


def build_parts(model_params: Any, device: str | torch.device | None = None) -> dict[str, nn.Module]:
    """Instantiate the unet / vae / text_encoder / adapter nodes of a config's ``model.params`` (on ``device``)."""
    parts = {}
    for name in PART_PREFIXES:
        node = model_params.get(name)
        if node is None:
            raise CheckpointError(
                f"config has no model.params.{name} node; prepare_weights needs all of {list(PART_PREFIXES)}"
            )
        with torch.device(device) if device is not None else contextlib.nullcontext():
            parts[name] = instantiate(node, f"model.params.{name}")
    return parts


def _assign_from_file(module: nn.Module, prefix: str, sd: Mapping[str, torch.Tensor]) -> nn.Module:
    """Give a meta-built part the file's tensors (no copy when the dtypes agree); every key must be in the file."""
    tensors = {k: sd[prefix + k].to(v.dtype) for k, v in module.state_dict().items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    return module


def group_keys(keys: Sequence[str], depth: int = 5) -> list[tuple[str, int]]:
    """Group state-dict keys by module path with indices collapsed to '*', e.g. control_model.zero_convs.*.*."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")[:-1][:depth]
        counts[".".join("*" if p.isdigit() else p for p in parts)] += 1
    return sorted(counts.items())


def prepare_weights(
    sd_path: str | Path, config_path: str | Path, out_path: str | Path, overrides: Sequence[str] = ()
) -> dict:
    """Write the initial checkpoint; returns a report {copied: {part: n}, fresh: [keys], unused: n, out: path}."""
    config = load_config(config_path, overrides=overrides)
    params = config.model.params
    sd = open_state_dict(sd_path)
    meta_parts = build_parts(params, device="meta")
    check_sd_parts(meta_parts, sd)
    state: dict[str, torch.Tensor] = {}
    copied: dict[str, int] = {}
    for name in SD_PARTS:
        prefix = PART_PREFIXES[name]
        module = meta_parts[name]
        if any(prefix + k not in sd for k in module.state_dict()):  # only ignorable keys (checked), e.g. position_ids
            module = instantiate(params[name], f"model.params.{name}")
            with torch.no_grad():
                for key, value in module.state_dict().items():
                    if prefix + key in sd:
                        value.copy_(sd[prefix + key])
        else:
            module = _assign_from_file(module, prefix, sd)
        part_state = module.state_dict()
        copied[name] = sum(prefix + k in sd for k in part_state)
        state.update({prefix + k: v for k, v in part_state.items()})
        del meta_parts[name]
    adapter = instantiate(params.adapter, "model.params.adapter")  # the only part built with real (fresh) init
    adapter_state = adapter.state_dict()
    twins = [PART_PREFIXES["unet"] + k for k in adapter_state if PART_PREFIXES["unet"] + k in sd]
    sd_shapes = {k: shape_of(sd, k) for k in twins}
    to_copy, fresh = plan_adapter_init({k: tuple(v.shape) for k, v in adapter_state.items()}, sd_shapes)
    with torch.no_grad():
        for key in to_copy:
            adapter_state[key].copy_(sd[PART_PREFIXES["unet"] + key])
    copied["adapter"] = len(to_copy)
    state.update({PART_PREFIXES["adapter"] + k: v for k, v in adapter_state.items()})
    betas = make_beta_schedule("linear", int(params.timesteps), float(params.linear_start), float(params.linear_end))
    state.update(schedule_buffers(betas))
    used = {k for k in state if k in sd} | {PART_PREFIXES["unet"] + k for k in to_copy}
    unused = [k for k in sd if k not in used]
    save_state_dict(state, out_path)
    return {
        "copied": copied,
        "fresh": [PART_PREFIXES["adapter"] + k for k in fresh],
        "fresh_numel": sum(adapter_state[k].numel() for k in fresh),
        "unused": len(unused),
        "unused_groups": group_keys(unused, depth=2),
        "out": str(out_path),
        "num_keys": len(state),
    }


@honours_trust_flag
def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trust_argument(parser)
    parser.add_argument("sd_ckpt", help="SD1.5 checkpoint (.ckpt/.safetensors, ldm key layout)")
    parser.add_argument("config", help="model config, e.g. configs/grpose/humanart.yaml")
    parser.add_argument("out", help="output file (.ckpt or .safetensors)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.params.adapter.params.k=4")
    args = parser.parse_args(argv)
    try:
        report = prepare_weights(args.sd_ckpt, args.config, args.out, args.overrides)
    except CheckpointError as err:
        print(f"prepare_weights: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    copied = ", ".join(f"{name} {n}" for name, n in report["copied"].items())
    print(f"copied from {args.sd_ckpt}: {copied} keys")
    print(f"fresh init ({len(report['fresh'])} keys, {report['fresh_numel'] / 1e6:.2f} M values):")
    for group, count in group_keys(report["fresh"]):
        print(f"  {group}: {count}")
    if report["unused"]:
        groups = ", ".join(f"{g} ({n})" for g, n in report["unused_groups"])
        print(f"not used from the SD file: {report['unused']} keys: {groups}")
    print(f"wrote {report['num_keys']} keys to {report['out']}")
    return report


if __name__ == "__main__":
    main()
