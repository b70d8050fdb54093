"""The lab estimator's ceiling: its pose AP on held-out *real* lab images (docs/lab.md §3).

Every lab result (generated images scored by the same estimator) sits under this number: a generated figure can
at best be detected as well as a drawn one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from grpose.lab.data import load_lab_arrays
from grpose.metrics.error_breakdown import pose_error_breakdown
from grpose.validation import PROTOCOLS, score_images, summary_row


def estimator_ceiling(
    estimator: Any,
    mapping_file: str | Path,
    base_dir: str | Path,
    crop_size: int,
    num_images: int | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    breakdown: bool = False,
) -> dict[str, Any]:
    """AP, AP50, CAP, PCE (both protocols, ``summary_row`` columns) of ``estimator`` on the first ``num_images``
    images of a lab split (all when None), centre-cropped to ``crop_size`` as the lab trains and evaluates.

    ``transform`` maps the uint8 (N, S, S, 3) images before scoring (e.g. the lab autoencoder's round trip).
    ``breakdown`` adds ``"breakdown"``: where the corrected protocol's AP is lost (``pose_error_breakdown``,
    docs/metrics.md §10)."""
    arrays = load_lab_arrays(mapping_file, base_dir, crop_size)
    n = len(arrays) if num_images is None else min(num_images, len(arrays))
    images = arrays.images[:n] if transform is None else transform(arrays.images[:n])
    detections: dict[str, list] = {}
    poses = list(arrays.poses[:n])
    metrics = score_images(
        {protocol: images for protocol in PROTOCOLS}, poses, arrays.ids[:n], estimator, detections=detections
    )
    row = {**summary_row(metrics), "num_images": n}
    if breakdown:
        height, width = images.shape[1:3]
        row["breakdown"] = pose_error_breakdown(poses, detections["corrected"], height, width, image_ids=arrays.ids[:n])
    return row
