"""Scoring of a finished evaluation: merge the shards, pose metrics over the whole set and per scene (docs/metrics.md
§1-§6), ``metrics.json`` / ``metrics.csv`` and the printed table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grpose.eval_results import merge_results


def merged_records(out_dir: Path, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every shard's records, each expected entry exactly once, in the order of ``ids`` (map-file order: whole-set
    metrics do not depend on it, the per-batch rows ``*_batch_mean`` follow it, as the released DataLoader did)."""
    position = {entry_id: i for i, entry_id in enumerate(ids)}
    return sorted(merge_results(out_dir, ids), key=lambda r: position[r["id"]])


def pose_scores(records: Sequence[dict[str, Any]], *, protocol: str, metric_batch_size: int) -> dict[str, Any]:
    """``{"pose": whole-set metrics, "pose_per_scene": {scene: metrics}}`` of the records' detections."""
    from grpose.metrics.pose import evaluate_pose_alignment, per_scene

    gt = [np.asarray(r["gt"], dtype=np.float32) for r in records]
    detections = [
        {
            "keypoints": np.asarray(r["detections"]["keypoints"], dtype=np.float32).reshape(-1, 17, 3),
            "scores": np.asarray(r["detections"]["scores"], dtype=np.float32),
        }
        for r in records
    ]
    heights = [r["height"] for r in records]
    widths = [r["width"] for r in records]
    common = dict(protocol=protocol, batch_size=metric_batch_size, image_ids=[r["id"] for r in records])
    return {
        "pose": evaluate_pose_alignment(gt, detections, heights, widths, **common),
        "pose_per_scene": per_scene([r["scene"] for r in records], gt, detections, heights, widths, **common),
    }


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> None:
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    write_csv(out_dir / "metrics.csv", metrics)


def write_csv(path: Path, metrics: dict[str, Any]) -> None:
    """One row for the whole set ("all") and one per scene, a column per numeric pose metric."""
    rows = [("all", metrics.get("pose", {}))] + sorted(metrics.get("pose_per_scene", {}).items())
    keys = sorted({k for _, m in rows for k, v in m.items() if isinstance(v, int | float)})
    lines = ["scene," + ",".join(keys)]
    lines += [f"{scene}," + ",".join(f"{m.get(k, '')}" for k in keys) for scene, m in rows]
    path.write_text("\n".join(lines) + "\n")


def print_table(metrics: dict[str, Any]) -> None:
    pose = metrics.get("pose", {})
    shown = ["ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "cap", "cap_corrected", "pce", "ap_batch_mean"]
    print(f"protocol: {metrics['protocol']}   images: {metrics['num_images']}")
    print(" ".join(f"{k:>13}" for k in shown if k in pose))
    print(" ".join(f"{pose[k]:>13.4f}" for k in shown if k in pose))
    for key, value in metrics.get("quality", {}).items():
        if isinstance(value, int | float):
            print(f"{key}: {value:.4f}")
