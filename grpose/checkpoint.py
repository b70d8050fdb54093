"""Checkpoint IO: read .ckpt/.pth/.safetensors state dicts safely, load them with a key report, save them.

Reading never runs code from a file unless the user opts in (``--trust_checkpoint`` / ``GRPOSE_TRUST_CHECKPOINTS=1``):
``torch.load(weights_only=True)`` first, and for legacy pickles that it refuses (Lightning 1.x hyper-parameters,
mmcv metadata, ...) the restricted unpickler of ``grpose.safe_pickle``, which rebuilds tensors and plain containers
and turns other classes into inert placeholders. A file whose pickle calls something else, or whose needed part
(the state dict; the whole checkpoint when resuming) holds such an object, is refused naming the class.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grpose import safe_pickle
from grpose.trust import TRUST_ENV, TRUST_HINT, trust_checkpoints

log = logging.getLogger(__name__)

# Keys that differ between otherwise compatible SD1.5 / GRPose files and never mean a wrong architecture.
DEFAULT_IGNORED_PATTERNS: tuple[str, ...] = ("model_ema.", "position_ids", "lvlb_weights", "logvar")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model; the message says which and why."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint needs more than the safe loader rebuilds; ``name`` is the class or callable it asked for."""

    def __init__(self, message: str, name: str) -> None:
        self.name = name
        super().__init__(message)


def load_torch_file(path: str | Path, map_location: Any = "cpu", trust: bool | None = None) -> Any:
    """``torch.load`` that runs no code from the file unless trusted (see the module docstring).

    Raises ``UntrustedCheckpointError`` when the pickle calls a global outside the allowlist. The result may hold
    ``safe_pickle.Unloaded`` placeholders (check what you use with ``safe_pickle.find_unloaded``).
    """
    path = Path(path)
    mmap = zipfile.is_zipfile(path)
    if trust_checkpoints(trust):
        log.warning("%s: loading with weights_only=False (trusted: --trust_checkpoint / %s)", path, TRUST_ENV)
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        log.info("%s is not weights-only (%s); reading it with the restricted unpickler", path, str(err)[:200])
    try:
        return torch.load(
            path, map_location=map_location, weights_only=False, mmap=mmap, pickle_module=safe_pickle.pickle_module
        )
    except safe_pickle.UnsafePickleError as err:
        raise UntrustedCheckpointError(
            f"refused to load {path}: {err} (it rebuilds only tensors, numpy arrays and plain containers). "
            + TRUST_HINT,
            err.name,
        ) from None


def _refuse_unloaded(obj: Any, path: Path, what: str) -> None:
    found = safe_pickle.find_unloaded(obj)
    if found is not None:
        where, name = found
        raise UntrustedCheckpointError(
            f"refused to load {path}: {what} holds an object of class {name} at {where}, which the safe loader does "
            f"not rebuild. {TRUST_HINT}",
            name,
        )


def read_checkpoint(path: str | Path, map_location: Any = "cpu", trust: bool | None = None) -> Any:
    """A whole checkpoint (e.g. to resume from), refused if any part needs more than the safe loader rebuilds."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    obj = load_torch_file(path, map_location, trust)
    if not trust_checkpoints(trust):
        _refuse_unloaded(obj, path, "the checkpoint")
    return obj


def _missing_file_message(path: Path, config_key: str | None, what: str | None) -> str:
    parts = [f"checkpoint file not found: {path}"]
    if what:
        parts.append(f"(expected: {what})")
    if config_key:
        parts.append(f"- set config key '{config_key}' to the file's path")
    parts.append("- see models/README.md for where each weight file comes from")
    return " ".join(parts)


def read_state_dict(
    path: str | Path,
    config_key: str | None = None,
    what: str | None = None,
    map_location: str = "cpu",
    trust: bool | None = None,
    use_ema: bool = False,
) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.ckpt``/``.pth``/``.pt``/``.bin`` (torch), ``.safetensors``, or a diffusers model
    folder (converted to the ldm layout, ``grpose/diffusers_format.py``).

    A ``state_dict`` entry (Lightning, mmcv) is unwrapped, and so is a leading ``module.`` (DDP) prefix.
    ``use_ema``: the trained weights are replaced by the checkpoint's moving average (``ema`` entry, written when
    training with ``model.params.ema_decay``; docs/design.md §7); a file without one is an error.
    ``config_key`` and ``what`` only improve the error message when the file is missing. Torch files are read by
    ``load_torch_file`` (no code from the file runs unless ``trust`` / ``TRUST_ENV``); metadata next to the
    state dict may hold unknown classes, the state dict itself may not.
    """
    path = Path(path)
    if path.is_dir():
        from grpose.diffusers_format import is_diffusers_folder, read_diffusers_folder

        if not is_diffusers_folder(path):
            raise CheckpointError(
                f"{path} is a folder but not a diffusers model folder (no unet/config.json); give a weight file"
            )
        return read_diffusers_folder(path, map_location=map_location)
    if not path.is_file():
        raise CheckpointError(_missing_file_message(path, config_key, what))
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=map_location)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"could not read {path} as safetensors (truncated or corrupt?): {err}") from err
    try:
        obj = load_torch_file(path, map_location, trust)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as err:
        raise CheckpointError(f"could not read checkpoint {path} (truncated or corrupt?): {err}") from err
    ema = obj.get("ema") if isinstance(obj, Mapping) else None
    if use_ema and not (isinstance(ema, Mapping) and isinstance(ema.get("shadow"), Mapping)):
        raise CheckpointError(
            f"{path} holds no moving average of its weights (no 'ema' entry): it was trained without "
            "model.params.ema_decay; evaluate it without --use_ema"
        )
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if use_ema:
        unknown = sorted(set(ema["shadow"]) - set(obj))
        if unknown:
            raise CheckpointError(f"{path}: its 'ema' entry has keys its state dict lacks, e.g. {unknown[:3]}")
        obj = {**obj, **ema["shadow"]}
    if not trust_checkpoints(trust):
        _refuse_unloaded(obj, path, "the state dict")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state_dict = dict(obj)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a state dict as ``.safetensors`` or, for any other suffix, a torch file ``{'state_dict': ...}``.

    The file is written next to its destination and renamed, so an interrupted save never leaves a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp))
    else:
        torch.save({"state_dict": tensors}, tmp)
    os.replace(tmp, path)
    return path


@dataclass
class LoadReport:
    """What happened to each key when a state dict was loaded into a module."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    #: why an ignored key was ignored, where there is more to say than "matches an ignore pattern"
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self, limit: int = 10) -> str:
        lines = [
            f"loaded {len(self.loaded)} keys, ignored {len(self.ignored)}, "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}"
        ]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
                lines.append(f"  {name}: {shown}")
        if self.ignored:
            groups = sorted({k.split(".")[0] for k in self.ignored})
            lines.append(f"  ignored groups: {', '.join(groups)}")
        by_reason: dict[str, list[str]] = {}
        for key, why in self.reasons.items():
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
            lines.append(f"  ignored {keys[0]}{more}: {why}")
        return "\n".join(lines)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key.startswith(p) or p in key for p in patterns)


def unused_checkpoint_keys(module: nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    """Keys (with shape and reason) that a released checkpoint has but ``module`` deliberately does not build.

    Collected from every submodule that defines ``unused_checkpoint_keys()`` (e.g. the pose-encoder stages of
    PGI levels an ablation does not use), prefixed with the submodule's name.
    """
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, sub in module.named_modules():
        fn = getattr(sub, "unused_checkpoint_keys", None)
        if callable(fn):
            prefix = f"{name}." if name else ""
            out.update({prefix + k: v for k, v in fn().items()})
    return out


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    ignore: Iterable[str] = (),
    source: str = "state dict",
) -> LoadReport:
    """Load ``state_dict`` into ``module`` and report missing, unexpected and ignored keys.

    Keys matching ``DEFAULT_IGNORED_PATTERNS`` or ``ignore`` (prefixes such as ``mmpose_model.``) are reported
    as ignored on either side. Keys that the module declares as built by the release but unused here
    (``unused_checkpoint_keys``) are ignored with their reason when their shape is the declared one. A shape
    mismatch always fails naming the key and both shapes; with ``strict`` any other missing or unexpected key
    fails with the list.
    """
    patterns = tuple(DEFAULT_IGNORED_PATTERNS) + tuple(ignore)
    own = module.state_dict()
    release_only = unused_checkpoint_keys(module)
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in state_dict.items():
        if key in own:
            if tuple(own[key].shape) != tuple(value.shape):
                if _matches(key, patterns):  # e.g. CLIP position_ids stored as (77,) by other library versions
                    report.ignored.append(key)
                    continue
                mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
            else:
                to_load[key] = value
        elif key in release_only:
            shape, why = release_only[key]
            if tuple(value.shape) != shape:
                mismatched.append(f"{key}: file {tuple(value.shape)} vs release layout {shape}")
            report.ignored.append(key)
            report.reasons[key] = why
        elif _matches(key, patterns):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    for key in own:
        if key not in state_dict:
            (report.ignored if _matches(key, patterns) else report.missing).append(key)
    if mismatched:
        shown = "\n  ".join(mismatched[:10])
        raise CheckpointError(
            f"{source} does not fit the model: {len(mismatched)} shape mismatch(es), e.g.\n  {shown}\n"
            "Is it a checkpoint of another architecture (e.g. SD2 instead of SD1.5) or another config?"
        )
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not fit the model:\n{report.summary()}")
    module.load_state_dict(to_load, strict=False, assign=_is_meta(module))
    report.loaded = sorted(to_load)
    return report


def _is_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())
