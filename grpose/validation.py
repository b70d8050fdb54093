"""Pose alignment of a fixed validation subset: sample with fixed per-image seeds, detect, score (docs/metrics.md).

Used at the end of a training run (``final_evaluation`` in a config: the lab's main job prints AP next to the
base-only AP of the same images) and by the lab study. Images are generated exactly as the evaluation does
(``grpose/evaluation/generate.py``): one noise tensor per entry from ``image_seed(seed, id)``, DDIM with
classifier-free guidance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from grpose.eval_results import image_seed
from grpose.metrics.pose import evaluate_pose_alignment

log = logging.getLogger(__name__)

PROTOCOLS = ("corrected", "released")


@dataclass
class SubsetSamples:
    """What one pass over a subset produced: uint8 images (N, H, W, 3) RGB and the ground-truth poses."""

    ids: list[str]
    images: np.ndarray
    gt_poses: list[np.ndarray]
    hints: np.ndarray
    prompts: list[str]


def to_uint8(images: torch.Tensor, protocol: str) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8; 'released' floors like the release, 'corrected' rounds."""
    x = ((images.float().clamp(-1, 1) + 1) / 2) * 255.0
    x = torch.floor(x) if protocol == "released" else torch.round(x)
    return x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def seeded_noise(entry_ids: Sequence[str], *, seed: int, shape: Sequence[int]) -> torch.Tensor:
    """Initial noise (N, *shape), one draw per entry from ``image_seed(seed, id)``: an entry's image does not depend
    on its batch, the number of processes or a resume (README "Evaluation")."""
    generators = [torch.Generator().manual_seed(image_seed(seed, entry_id)) for entry_id in entry_ids]
    return torch.stack([torch.randn(shape, generator=generator) for generator in generators])


@torch.no_grad()
def generate_subset(
    model: Any,
    dataset: Any,
    ids: Sequence[str],
    seed: int = 42,
    num_steps: int = 20,
    guidance_scale: float = 9.0,
    batch_size: int = 8,
    use_adapter: bool = True,
) -> tuple[list[dict], torch.Tensor]:
    """Generate one image per entry of ``ids`` (a PoseDataset in eval mode); returns the samples and the images
    (N, 3, H, W) in [-1, 1]. ``use_adapter=False`` samples the frozen base model alone (the floor)."""
    index_of = {entry_id: i for i, entry_id in enumerate(dataset.ids)}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    samples, images = [], []
    for start in range(0, len(ids), batch_size):
        batch = [dataset[index_of[i]] for i in ids[start : start + batch_size]]
        hint = torch.stack([torch.from_numpy(s["hint"]) for s in batch]).permute(0, 3, 1, 2).to(device)
        latent_shape = (model.latent_channels, hint.shape[2] // 8, hint.shape[3] // 8)
        noise = seeded_noise([s["id"] for s in batch], seed=seed, shape=latent_shape).to(device)
        images.append(
            model.sample(
                hint,
                [s["txt"] for s in batch],
                noise=noise,
                num_steps=num_steps,
                guidance_scale=guidance_scale,
                use_adapter=use_adapter,
            ).cpu()  # fmt: skip
        )
        samples += batch
    model.train(was_training)
    return samples, torch.cat(images)


def score_subset(
    samples: Sequence[dict], images: torch.Tensor, estimator: Any, protocols: Sequence[str] = PROTOCOLS
) -> dict[str, dict[str, Any]]:
    """Detect people on the generated images (N, 3, H, W) in [-1, 1] and score them against the samples' poses,
    per protocol (the protocols differ in the uint8 conversion and the detector's channel order, docs/metrics.md)."""
    gt = [np.asarray(s["pose"], dtype=np.float32) for s in samples]
    ids = [s["id"] for s in samples]
    return score_images({p: to_uint8(images, p) for p in protocols}, gt, ids, estimator)


def detect_images(images: np.ndarray, estimator: Any, protocol: str, batch_size: int = 64) -> list[dict[str, Any]]:
    """The estimator's detections on uint8 RGB images (N, H, W, 3) as ``protocol`` runs it.

    The released protocol feeds swapped channels to the detector (docs/metrics.md); the estimator's
    ``channel_order`` is switched for that call and restored. The detector sees ``batch_size`` images per call
    (bounded memory).
    """
    original = estimator.channel_order
    try:
        estimator.channel_order = "bgr" if protocol == "released" else "rgb"
        detections = []
        for start in range(0, len(images), batch_size):
            detections += estimator(list(images[start : start + batch_size]))
        return detections
    finally:
        estimator.channel_order = original


def score_images(
    images: dict[str, np.ndarray],
    gt_poses: Sequence[np.ndarray],
    ids: Sequence[str],
    estimator: Any,
    batch_size: int = 64,
    detections: dict[str, list] | None = None,
) -> dict[str, dict[str, Any]]:
    """Pose metrics per protocol of uint8 RGB images (N, H, W, 3) given per protocol, against ``gt_poses``.

    Real images (the lab estimator's ceiling) pass the same array for both protocols. ``detections``, when given,
    receives each protocol's detections (``detect_images``).
    """
    out = {}
    for protocol, batch in images.items():
        found = detect_images(batch, estimator, protocol, batch_size)
        if detections is not None:
            detections[protocol] = found
        height, width = batch.shape[1], batch.shape[2]
        out[protocol] = evaluate_pose_alignment(
            list(gt_poses), found, height, width, protocol=protocol, image_ids=list(ids)
        )
    return out


def summary_row(metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """AP, AP50, CAP, PCE of both protocols as one flat row (the lab study's table columns)."""
    row = {}
    for protocol, m in metrics.items():
        tag = "" if protocol == "corrected" else "_released"
        ap_key = "ap" if protocol == "corrected" else "ap_batch_mean"
        row[f"ap{tag}"] = m[ap_key]
        row[f"ap50{tag}"] = m["ap50" if protocol == "corrected" else "ap50_batch_mean"]
        row[f"cap{tag}"] = m["cap_corrected" if protocol == "corrected" else "cap_batch_mean"]
        row[f"pce{tag}"] = m["pce" if protocol == "corrected" else "pce_batch_mean"]
    return row
