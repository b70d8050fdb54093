"""Eval section: projected wall time of a Human-Art evaluation from the sampling and pose-estimator numbers."""

from __future__ import annotations

from typing import Any

HUMANART_EVAL_IMAGES = 4750


def eval_estimate(sample_rows: list[dict[str, Any]], pose: dict[str, Any] | None, label: str) -> dict[str, Any]:
    """Projected wall time of generating + pose-detecting the 4,750 Human-Art validation images on one device."""
    rates = [r["images_per_s"] for r in sample_rows if "images_per_s" in r and r.get("variant") == "eager"]
    if not rates:
        return {"error": "no sampling numbers"}
    best = max(rates)
    result: dict[str, Any] = {
        "model": label,
        "images": HUMANART_EVAL_IMAGES,
        "sampling_images_per_s": best,
        "sampling_h": HUMANART_EVAL_IMAGES / best / 3600,
    }
    total = result["sampling_h"]
    if pose and "network_images_per_s" in pose:
        pose_s = 1 / pose["network_images_per_s"] + pose["grouping_ms_per_image"] / 1000
        result.update(pose_images_per_s=1 / pose_s, pose_h=HUMANART_EVAL_IMAGES * pose_s / 3600)
        total += result["pose_h"]
    result["total_h"] = total
    return result
