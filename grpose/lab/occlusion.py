"""Joints hidden behind other figures in the lab's crops, and what they cost an estimator (docs/lab.md §1).

The synthetic people are drawn one after another, so a later figure covers parts of an earlier one while every
joint stays annotated (as COCO annotates occluded joints). ``occlusion_oracle`` measures how many annotated joints
are hidden and the AP of an oracle estimator that is exact on every visible joint and misses every hidden one: how
far an estimator gets without guessing hidden joints from the visible limbs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from grpose.data.synthetic import SyntheticSample
from grpose.data.transforms import clean_pose, crop_geometry
from grpose.metrics.pose import count_gt_people, evaluate_pose_alignment

MISS = -1000.0  # where the oracle puts a joint it cannot see: no keypoint similarity with anything


def hidden_joints(sample: SyntheticSample, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample's GT pose (10, 17, 3) in centre-crop pixels, as ``PoseDataset(train=False)`` serves it, and a
    (10, 17) bool: annotated joints whose pixel is mostly covered (coverage > 127 of 255) by a person drawn later.
    Needs the sample's masks."""
    if sample.masks is None:
        raise ValueError("hidden_joints needs the person masks: draw the samples with synthetic_samples(masks=True)")
    height, width = sample.image.shape[:2]
    geometry = crop_geometry(height, width, crop_size, None)
    keypoints = [np.asarray(p["keypoints"], np.float64) for p in sample.people]
    visible_only = []
    for p, kp in enumerate(keypoints):
        covered = np.zeros((height, width), bool)
        for mask in sample.masks[p + 1 :]:
            covered |= mask > 127
        x = np.clip(np.round(kp[:, 0]).astype(int), 0, width - 1)
        y = np.clip(np.round(kp[:, 1]).astype(int), 0, height - 1)
        seen = kp.copy()
        seen[covered[y, x], 0] = np.nan  # clean_pose drops non-finite joints
        visible_only.append(seen)
    pose = clean_pose(keypoints, height, width, geometry)  # (10, 17, 3)
    seen_pose = clean_pose(visible_only, height, width, geometry)
    return pose, (pose[..., 2] > 0) & ~(seen_pose[..., 2] > 0)


def occlusion_oracle(samples: Iterable[SyntheticSample], crop_size: int) -> dict[str, Any]:
    """Share of annotated joints hidden behind later figures, and the AP / AP50 (corrected protocol) of the oracle
    that is exact on visible joints and misses hidden ones; overall and by number of people in the crop."""
    poses, oracle, hidden_counts, annotated_counts = [], [], [], []
    for sample in samples:
        pose, hidden = hidden_joints(sample, crop_size)
        annotated = pose[..., 2] > 0  # (10, 17)
        present = annotated.any(-1)  # (10,) person slots with a joint in the crop
        guess = pose.copy()
        guess[..., 2] = 1.0
        guess[hidden, :2] = MISS
        poses.append(pose)
        oracle.append({"keypoints": guess[present], "scores": np.ones(int(present.sum()))})
        hidden_counts.append(int(hidden.sum()))
        annotated_counts.append(int(annotated.sum()))
    if not poses:
        raise ValueError("occlusion_oracle: no samples")
    people = count_gt_people(np.stack(poses))
    hidden_counts, annotated_counts = np.array(hidden_counts), np.array(annotated_counts)

    def score(index: list[int]) -> dict[str, float]:
        m = evaluate_pose_alignment([poses[i] for i in index], [oracle[i] for i in index], crop_size, crop_size)
        share = hidden_counts[index].sum() / max(1, annotated_counts[index].sum())
        return {"crops": len(index), "hidden_share": float(share), "ap": float(m["ap"]), "ap50": float(m["ap50"])}

    row = score(list(range(len(poses))))
    counts = [int(n) for n in np.unique(people) if n > 0]  # crops whose people all fell outside have no GT
    row["by_people"] = {n: score([i for i in range(len(poses)) if people[i] == n]) for n in counts}
    return row
