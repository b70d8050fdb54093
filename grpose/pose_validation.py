"""Pose metrics while training: AP / CAP / PCE of a fixed validation subset every N steps (docs/metrics.md §9).

Losses hide whether an adapter has learned the pose (ControlNet-style adapters converge suddenly), so every
``trainer.val_every_n_steps`` steps the callback samples the same entries with the same per-image seeds
(``grpose.eval_results.image_seed``), detects people with the configured evaluation estimator and logs the
metrics of both protocols to every logger (TensorBoard, CSV) as ``val_pose/*``, plus a grid and the images.

Under DDP the subset is split like the evaluation (``shard_batches``: whole batches, so every image has the same
batch companions for any number of processes), each rank samples its batches, rank 0 gathers and scores: the
numbers are identical for 1 and N processes. Sampling runs under no_grad in eval mode, one batch at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from grpose.eval_results import shard_batches
from grpose.validation import PROTOCOLS, generate_subset, score_images, summary_row, to_uint8

log = logging.getLogger(__name__)


class PoseValidation(pl.Callback):
    def __init__(
        self,
        dataset_params: dict[str, Any],
        build_estimator: Any,
        every_n_steps: int,
        out_dir: str | Path,
        num_images: int = 16,
        seed: int = 42,
        ddim_steps: int = 10,
        guidance_scale: float = 5.0,
        batch_size: int = 8,
    ) -> None:
        """``build_estimator()`` returns the pose estimator (built on rank 0 at the first validation);
        ``dataset_params`` are the validation PoseDataset's arguments."""
        self.dataset_params = dict(dataset_params)
        self.build_estimator = build_estimator
        self.every_n_steps = every_n_steps
        self.out_dir = Path(out_dir)
        self.num_images = num_images
        self.seed = seed
        self.ddim_steps = ddim_steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self._dataset = None
        self._estimator = None
        self._last_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.validate(trainer, pl_module, step)

    def _shard_records(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """This rank's generated images (uint8 per protocol) with their ids and ground-truth poses."""
        from grpose.data.pose_dataset import PoseDataset

        if self._dataset is None:
            self._dataset = PoseDataset(**{**self.dataset_params, "train": False})
        ids = list(self._dataset.ids)[: self.num_images]
        records = []
        for batch_ids in shard_batches(ids, self.batch_size, trainer.global_rank, trainer.world_size):
            with trainer.precision_plugin.forward_context():  # sample in the training precision, as the image grids
                samples, images = generate_subset(
                    pl_module,
                    self._dataset,
                    batch_ids,
                    seed=self.seed,
                    num_steps=self.ddim_steps,
                    guidance_scale=self.guidance_scale,
                    batch_size=len(batch_ids),
                )
            uint8 = {protocol: to_uint8(images, protocol) for protocol in PROTOCOLS}  # (B, H, W, 3) each
            for i, sample in enumerate(samples):
                records.append(
                    {
                        "id": sample["id"],
                        "pose": np.asarray(sample["pose"], dtype=np.float32),
                        "hint": np.asarray(sample["hint"]),
                        "images": {protocol: uint8[protocol][i] for protocol in PROTOCOLS},
                    }
                )
        return records

    def validate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> dict[str, float] | None:
        """Sample, gather on rank 0, score and log; returns the metrics on rank 0 (None elsewhere)."""
        records = self._shard_records(trainer, pl_module)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        if not trainer.is_global_zero:
            return None
        records.sort(key=lambda r: r["id"])
        if self._estimator is None:
            self._estimator = self.build_estimator()
        images = {p: np.stack([r["images"][p] for r in records]) for p in PROTOCOLS}
        metrics = score_images(images, [r["pose"] for r in records], [r["id"] for r in records], self._estimator)
        row = summary_row(metrics)
        for logger in trainer.loggers:
            logger.log_metrics({f"val_pose/{k}": float(v) for k, v in row.items()}, step=step)
        self._write(step, records, images["corrected"])
        log.info("pose validation at step %d on %d images: AP %.3f, CAP %.3f, PCE %.2f",
                 step, len(records), row["ap"], row["cap"], row["pce"])  # fmt: skip
        return row

    def _write(self, step: int, records: list[dict[str, Any]], images: np.ndarray) -> None:
        """The images (npz) and a grid: skeleton hint above each generated image."""
        import cv2

        self.out_dir.mkdir(parents=True, exist_ok=True)
        ids = np.array([r["id"] for r in records])
        np.savez_compressed(self.out_dir / f"step_{step:07d}.npz", ids=ids, images=images)
        hints = np.stack([((r["hint"] + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8) for r in records])
        grid = np.concatenate([np.concatenate(list(hints), axis=1), np.concatenate(list(images), axis=1)], axis=0)
        cv2.imwrite(str(self.out_dir / f"step_{step:07d}.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
