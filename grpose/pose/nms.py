"""Pose NMS and the estimator's output record: keypoints, scores, areas (docs/pose_pipeline.md §2.7)."""

from __future__ import annotations

import numpy as np

from grpose.pose.skeleton import COCO_SIGMAS


def oks_nms(
    keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float, sigmas: np.ndarray = COCO_SIGMAS
) -> np.ndarray:
    """mmpose's ``oks_nms`` (score_per_joint=False, no visibility threshold); returns kept indices, best first."""
    if len(scores) == 0:
        return np.zeros(0, dtype=int)
    kpts = np.array([k.flatten() for k in keypoints])
    scores = np.array(scores)
    areas = np.array(areas)
    variances = (sigmas * 2) ** 2
    order = scores.argsort()[::-1]
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        g = kpts[i]
        ious = np.zeros(len(rest), dtype=np.float32)
        for n, j in enumerate(rest):
            d = kpts[j]
            dx = d[0::3] - g[0::3]
            dy = d[1::3] - g[1::3]
            e = (dx**2 + dy**2) / variances / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            ious[n] = np.sum(np.exp(-e)) / len(e) if len(e) != 0 else 0.0
        order = order[np.where(ious <= threshold)[0] + 1]
    return np.array(keep, dtype=int)


def people_to_results(
    people: np.ndarray, scores: np.ndarray, pose_nms_threshold: float, sigmas: np.ndarray = COCO_SIGMAS
) -> dict[str, np.ndarray]:
    """Keypoints (x, y, score), areas over all joints, then pose NMS order (docs/pose_pipeline.md §2.7)."""
    num_joints = people.shape[1] if people.ndim == 3 else len(sigmas)
    if people.shape[0] == 0:
        return {
            "keypoints": np.zeros((0, num_joints, 3), dtype=np.float32),
            "scores": np.zeros(0, dtype=np.float32),
            "areas": np.zeros(0, dtype=np.float32),
        }
    kpts = people[:, :, :3].astype(np.float32)
    areas = np.array(
        [(np.max(p[:, 0]) - np.min(p[:, 0])) * (np.max(p[:, 1]) - np.min(p[:, 1])) for p in kpts], dtype=np.float32
    )
    scores = np.asarray(scores, dtype=np.float32)
    keep = oks_nms(kpts, scores, areas, pose_nms_threshold, sigmas)
    return {"keypoints": kpts[keep], "scores": scores[keep], "areas": areas[keep]}
