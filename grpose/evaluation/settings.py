"""The resolved settings of one evaluation run, built once from the command line and the configs.

Every process of a run works from the same ``EvalSettings``: the model and metrics configs are loaded once and the
test set's mapping file is read once here (spawned processes receive the object, they do not reload anything).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from grpose.config import ConfigError, load_config


@dataclass(frozen=True)
class EvalSettings:
    """What ``eval_pose.py`` was asked to do, with defaults and config values resolved (README "Evaluation")."""

    config_files: list[str]  # the model YAML files, as given (named in error messages and metrics.json)
    model_config: DictConfig
    metrics_config: DictConfig  # pose estimator and quality settings (empty with --metrics none)
    metrics_config_file: str
    ckpt: str | None
    base_model: str | None
    use_ema: bool
    fast: bool
    images_dir: str | None  # score these images instead of sampling
    dataset_params: dict[str, Any]  # PoseDataset kwargs of the test set
    mapping: dict[str, Any]  # the test set's mapping file, read once
    limit: int | None
    batch_size: int
    metric_batch_size: int
    ddim_steps: int
    ddim_eta: float
    guidance_scale: float
    seed: int
    metrics: str  # pose | quality | all | none
    protocol: str  # corrected | released (docs/metrics.md)
    devices: int
    accelerator: str  # cuda | cpu, resolved from --accelerator and what this machine has
    out_dir: Path
    panels: bool

    @property
    def mapping_file(self) -> Path:
        return Path(self.dataset_params["mapping_file"])

    @property
    def base_dir(self) -> Path:
        """The directory the mapping's paths are relative to."""
        return Path(self.dataset_params.get("base_dir") or self.mapping_file.parent)

    @property
    def scores_pose(self) -> bool:
        return self.metrics in ("pose", "all")

    @property
    def scores_quality(self) -> bool:
        return self.metrics in ("quality", "all")

    @property
    def evaluated_ids(self) -> list[str]:
        """The entries scored, in map-file order (the per-batch rows follow it, as the released DataLoader did)."""
        chosen = set(sorted(self.mapping)[: self.limit] if self.limit else self.mapping)
        return [entry_id for entry_id in self.mapping if entry_id in chosen]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalSettings:
        """Resolve ``eval_pose.py``'s arguments: load the configs, find the test set, read its mapping file."""
        import torch

        try:
            model_config = load_config(*args.config_model, overrides=args.overrides)
            metrics_config = load_config(args.config_metrics) if args.metrics != "none" else OmegaConf.create({})
        except ConfigError as err:
            raise SystemExit(str(err)) from err
        dataset_params = test_dataset_params(
            model_config, map_file=args.map_file, base_dir=args.base_dir, height=args.H, width=args.W
        )
        mapping_file = Path(dataset_params["mapping_file"])
        if not mapping_file.is_file():
            raise SystemExit(f"--map_file: mapping file not found: {mapping_file}")
        use_cuda = args.accelerator != "cpu" and torch.cuda.is_available()
        return cls(
            config_files=list(args.config_model),
            model_config=model_config,
            metrics_config=metrics_config,
            metrics_config_file=args.config_metrics,
            ckpt=args.ckpt,
            base_model=args.base_model,
            use_ema=args.use_ema,
            fast=args.fast,
            images_dir=args.images_dir,
            dataset_params=dataset_params,
            mapping=json.loads(mapping_file.read_text()),
            limit=args.limit,
            batch_size=args.batch_size,
            metric_batch_size=args.metric_batch_size,
            ddim_steps=args.ddim_steps,
            ddim_eta=args.ddim_eta,
            guidance_scale=args.scale,
            seed=args.seed,
            metrics=args.metrics,
            protocol=args.protocol,
            devices=args.devices,
            accelerator="cuda" if use_cuda else "cpu",
            out_dir=output_dir(
                config_files=args.config_model,
                outdir=args.outdir,
                run=args.run,
                ckpt=args.ckpt,
                images_dir=args.images_dir,
            ),  # fmt: skip
            panels=not args.no_panels,
        )


def output_dir(
    *, config_files: list[str], outdir: str, run: str | None, ckpt: str | None, images_dir: str | None
) -> Path:
    """``outdir/<folder of the last model config>/<run>``; the run defaults to the checkpoint's (or images') name."""
    model_name = Path(config_files[-1]).parent.name or "model"
    run = run or (Path(ckpt).stem if ckpt else Path(images_dir).resolve().name)
    return Path(outdir) / model_name / run


def test_dataset_params(
    config: DictConfig, *, map_file: str | None, base_dir: str | None, height: int | None, width: int | None
) -> dict[str, Any]:
    """PoseDataset kwargs of the test set: the config's data.test (or data.validation) with --map_file, --base_dir,
    --H / --W applied, in evaluation mode."""
    data_params = config.get("data", {}).get("params", {})
    node = data_params.get("test") or data_params.get("validation")
    params = dict(OmegaConf.to_container(node.params, resolve=True)) if node is not None else {}
    if map_file:
        params["mapping_file"] = map_file
        params["base_dir"] = base_dir or str(Path(map_file).parent)
    elif base_dir:
        params["base_dir"] = base_dir
    if "mapping_file" not in params:
        raise SystemExit("no test set: pass --map_file or set data.params.test in the model config")
    if height or width:
        if (height or width) != (width or height):
            raise SystemExit(f"--H {height} and --W {width} differ; the test images are square crops")
        params["image_size"] = height or width
    params.update(train=False, caption_dropout=0.0, on_error="raise")
    return params
