"""The model an evaluation samples with: built from its config, ``--ckpt`` loaded strictly, ``--base_model`` swapped
in (docs/checkpoints.md §3-§5). Also used by scripts/pose2img.py and scripts/demo.py."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from omegaconf import DictConfig

from grpose.checkpoint import CheckpointError, load_into, read_state_dict
from grpose.config import instantiate
from grpose.export import load_trained_weights_with_base, read_export_metadata

log = logging.getLogger("grpose.eval")

IGNORED_KEYS = ("mmpose_model.",)  # the released checkpoint's pose-loss network, never used here
FROZEN_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")


def check_checkpoint_fits(
    config: DictConfig, *, ckpt: str, base_model: str | None, use_ema: bool, config_files: Sequence[str]
) -> None:
    """Compare ``ckpt``'s keys and shapes with the model of ``config``, built on the meta device (no weights read)."""
    if read_export_metadata(ckpt) is not None:  # trained weights only: checked when joined with the base
        if not base_model:
            raise SystemExit(f"--ckpt {ckpt} holds only trained weights: give their base as --base_model")
        return
    with torch.device("meta"):
        model = instantiate(config.model, "model")
    try:
        what = "a GRPose/ControlNet checkpoint"
        state_dict = read_state_dict(ckpt, config_key="--ckpt", what=what, use_ema=use_ema)
        load_into(model, state_dict, strict=True, ignore=IGNORED_KEYS, source=ckpt)
    except CheckpointError as err:
        raise SystemExit(f"--ckpt does not fit the model config {list(config_files)}: {err}") from err


def load_model(
    config: DictConfig,
    *,
    ckpt: str,
    config_files: Sequence[str],
    device: torch.device | str,
    base_model: str | None = None,
    use_ema: bool = False,
    fast: bool = False,
):
    """Build the model from its config, load ``ckpt`` strictly (``mmpose_model.*`` ignored), optionally swap the
    SD1.5 parts for ``base_model``; ``fast`` turns on every speed switch for sampling (README "Benchmarks")."""
    model = instantiate(config.model, "model")
    try:
        if read_export_metadata(ckpt) is not None:  # scripts/export_adapter.py output: joined with its base
            summary = load_trained_weights_with_base(model, ckpt, base_model)
            log.info("loaded %s with base %s: %s", ckpt, base_model, summary)
        else:
            state_dict = read_state_dict(ckpt, use_ema=use_ema)
            report = load_into(model, state_dict, strict=True, ignore=IGNORED_KEYS, source=ckpt)
            log.info("loaded %s: %s", ckpt, report.summary())
            if base_model:
                swap_base_model(model, base_model)
    except CheckpointError as err:
        raise SystemExit(f"--ckpt/--base_model does not fit the model config {list(config_files)}: {err}") from err
    if fast:
        model.configure_speed(
            frozen_dtype="bf16",
            knn_backend="auto",
            sample_cache_pose=True,
            sample_cuda_graph=True,
            cudnn_benchmark=True,
            channels_last=True,
            compile_blocks=True,
        )
    return model.to(device).eval()


def swap_base_model(model, path: str) -> None:
    """Load another SD1.5-layout checkpoint into the frozen parts only and report what was replaced."""
    state_dict = read_state_dict(path, config_key="--base_model", what="an SD1.5-layout checkpoint")
    own = model.state_dict()
    replaced: dict[str, int] = {}
    subset = {}
    for key, value in state_dict.items():
        if key.startswith(FROZEN_PREFIXES) and key in own:
            if own[key].shape != value.shape:
                raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, model {tuple(own[key].shape)}")
            subset[key] = value
            replaced[key.split(".")[0]] = replaced.get(key.split(".")[0], 0) + 1
    if not subset:
        raise CheckpointError(f"{path} holds no model.diffusion_model/first_stage_model/cond_stage_model keys")
    model.load_state_dict(subset, strict=False)
    log.info("--base_model %s replaced %s", path, ", ".join(f"{k}: {n} tensors" for k, n in sorted(replaced.items())))
