"""A whole evaluation: checks, every process's share of the images, then rank 0 scores the set (README
"Evaluation"; how the processes are started: grpose/evaluation/launch.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric import Fabric

from grpose.config import instantiate
from grpose.evaluation.generate import generate_shard, pending_batches
from grpose.evaluation.launch import launch, make_fabric
from grpose.evaluation.model_loading import load_model
from grpose.evaluation.preflight import preflight
from grpose.evaluation.quality import panel_quality, quality_settings
from grpose.evaluation.scoring import merged_records, pose_scores, write_metrics
from grpose.evaluation.settings import EvalSettings


def evaluate(settings: EvalSettings) -> dict[str, Any] | None:
    """Check the inputs, generate and detect in every process, score on rank 0; returns the metrics in the process
    of rank 0 (None in the other processes of a launcher)."""
    fabric = make_fabric(devices=settings.devices, accelerator=settings.accelerator)
    preflight(settings, rank=fabric.global_rank)  # every process: a failure must not leave the others waiting
    return launch(fabric, evaluate_rank, settings=settings)


def evaluate_rank(fabric: Fabric, *, settings: EvalSettings) -> dict[str, Any] | None:
    """One process: its shard of the images, then (rank 0, once all shards are complete) the scores."""
    import torch

    from grpose.cli import configure_logging
    from grpose.data.pose_dataset import PoseDataset

    rank, world_size = fabric.global_rank, fabric.world_size
    if world_size > 1:  # a spawned process starts without logging set up (no-op where it is)
        configure_logging(f"%(levelname)s rank{rank} %(name)s: %(message)s")
    dataset = PoseDataset(**settings.dataset_params, mapping=settings.mapping)
    ids = sorted(dataset.ids)[: settings.limit] if settings.limit else sorted(dataset.ids)
    batches, done = pending_batches(
        ids, batch_size=settings.batch_size, rank=rank, world_size=world_size, out_dir=settings.out_dir
    )
    if batches:
        generate_shard(
            batches,
            dataset=dataset,
            done=done,
            model=None if settings.images_dir else sampling_model(settings, device=fabric.device),
            estimator=pose_estimator(settings, device=fabric.device) if settings.scores_pose else None,
            images_dir=Path(settings.images_dir) if settings.images_dir else None,
            out_dir=settings.out_dir,
            rank=rank,
            panels=settings.panels,
            seed=settings.seed,
            ddim_steps=settings.ddim_steps,
            guidance_scale=settings.guidance_scale,
            eta=settings.ddim_eta,
            protocol=settings.protocol,
            device=fabric.device,
        )
    fabric.barrier()
    metrics = score(settings) if rank == 0 else None
    fabric.barrier()
    if world_size > 1 and torch.distributed.is_initialized():  # Fabric leaves its process group open
        torch.distributed.destroy_process_group()
    return metrics


def sampling_model(settings: EvalSettings, *, device):
    return load_model(
        settings.model_config,
        ckpt=settings.ckpt,
        config_files=settings.config_files,
        device=device,
        base_model=settings.base_model,
        use_ema=settings.use_ema,
        fast=settings.fast,
    )


def pose_estimator(settings: EvalSettings, *, device):
    """The configured detector; the released protocol feeds it swapped channels (docs/metrics.md §7)."""
    channel_order = "bgr" if settings.protocol == "released" else "rgb"
    return instantiate(
        settings.metrics_config.pose_estimator, "pose_estimator", channel_order=channel_order, device=str(device)
    )


def score(settings: EvalSettings) -> dict[str, Any]:
    """Metrics of the whole set, written to ``metrics.json`` and ``metrics.csv`` in the run directory."""
    records = merged_records(settings.out_dir, settings.evaluated_ids)
    metrics: dict[str, Any] = {
        "protocol": settings.protocol,
        "num_images": len(records),
        "checkpoint": str(settings.ckpt),
        "config": list(settings.config_files),
        "seed": settings.seed,
        "ddim_steps": settings.ddim_steps,
        "scale": settings.guidance_scale,
        "metric_batch_size": settings.metric_batch_size,
    }
    if settings.scores_pose:
        metrics.update(pose_scores(records, protocol=settings.protocol, metric_batch_size=settings.metric_batch_size))
    if settings.scores_quality:
        metrics["quality"] = panel_quality(
            settings.out_dir,
            mapping=settings.mapping,
            base_dir=settings.base_dir,
            out=settings.out_dir / "metrics_quality.json",
            **quality_settings(settings.metrics_config.get("quality", {})),
        )
    write_metrics(settings.out_dir, metrics)
    return metrics
