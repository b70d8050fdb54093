"""Where a bottom-up pose estimator loses keypoint AP: oracle re-scorings of its detections (docs/metrics.md §10).

Each oracle repairs one kind of error with the ground truth and re-scores with the same COCO keypoint AP
(``evaluate_keypoint_ap``, corrected protocol), so the gaps between the numbers split the lost AP into
extra detections (fragments and ghosts), grouping (joints given to the wrong person) and what is left: joints the
heatmaps miss or place imprecisely. ``gt_jitter_ap`` calibrates the last part on the data alone: the AP of the
ground truth itself with Gaussian noise of a given number of pixels on every coordinate.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from grpose.metrics.pose import (
    Detection,
    PoseInput,
    Size,
    _people,
    evaluate_keypoint_ap,
    gt_annotations,
)
from grpose.metrics.similarity import COCO_SIGMAS, NUM_JOINTS

__all__ = ["gt_jitter_ap", "joint_similarity", "pose_error_breakdown"]

#: A GT joint whose nearest detected joint of its type has a keypoint similarity below this is counted as missed
#: (the OKS threshold at which COCO's AP50 accepts a whole person).
MISSED_SIMILARITY = 0.5


def joint_similarity(gt_xy: np.ndarray, det_xy: np.ndarray, area: float) -> np.ndarray:
    """COCO's per-joint keypoint similarity exp(-d^2 / (2 area (2 sigma)^2)) of one GT person (17, 2) against
    detected joints (..., 17, 2): the term OKS averages over visible joints (docs/metrics.md §3)."""
    squared = ((np.asarray(det_xy, np.float64) - np.asarray(gt_xy, np.float64)) ** 2).sum(-1)  # (..., 17)
    return np.exp(-squared / (2.0 * (2.0 * COCO_SIGMAS) ** 2 * (area + np.spacing(1))))


def _gt_people(gt_poses: PoseInput, height: Size, width: Size) -> list[list[tuple[np.ndarray, np.ndarray, float]]]:
    """Per image, the GT people COCOeval scores under the corrected protocol: (xy (17, 2), visible (17,), area)."""
    people = _people(gt_poses)
    gt = gt_annotations(people, None, height, width, "corrected")
    out: list[list[tuple[np.ndarray, np.ndarray, float]]] = [[] for _ in people]
    for ann in gt["annotations"]:
        if ann["num_keypoints"] == 0:
            continue  # COCOeval ignores it
        kp = np.asarray(ann["keypoints"], np.float64).reshape(NUM_JOINTS, 3)  # (17, 3): x, y, v
        out[ann["image_id"]].append((kp[:, :2], kp[:, 2] > 0, float(ann["area"])))
    return out


def _detections(det: Detection) -> tuple[np.ndarray, np.ndarray]:
    keypoints = np.asarray(det["keypoints"], np.float64).reshape(-1, NUM_JOINTS, 3)  # (D, 17, 3): x, y, score
    return keypoints, np.asarray(det["scores"], np.float64).reshape(-1)


def _oks(gt_xy: np.ndarray, visible: np.ndarray, area: float, det_xy: np.ndarray) -> np.ndarray:
    """OKS (D,) of detections (D, 17, 2) against one GT person."""
    return joint_similarity(gt_xy, det_xy, area)[:, visible].mean(-1)


def _matched_detections(gt_people, det: Detection) -> dict[str, np.ndarray]:
    """The detections of one image that match a GT person (greedy by OKS, each at most once), the rest dropped."""
    keypoints, scores = _detections(det)
    if not gt_people or not len(scores):
        return {"keypoints": keypoints[:0], "scores": scores[:0]}
    oks = np.stack([_oks(xy, vis, area, keypoints[:, :, :2]) for xy, vis, area in gt_people])  # (G, D)
    keep: list[int] = []
    for _ in range(min(oks.shape)):
        g, d = np.unravel_index(np.argmax(oks), oks.shape)
        if oks[g, d] <= 0:
            break
        keep.append(int(d))
        oks[g, :], oks[:, d] = -1.0, -1.0
    keep.sort()
    return {"keypoints": keypoints[keep], "scores": scores[keep]}


def _oracle_grouped(gt_people, det: Detection) -> dict[str, np.ndarray]:
    """One person per GT person, each joint the detected joint of its type (from any detection of the image) most
    similar to it; the person's score is the mean of the chosen joints' scores."""
    keypoints, _ = _detections(det)
    if not gt_people or not len(keypoints):
        return {"keypoints": np.zeros((0, NUM_JOINTS, 3)), "scores": np.zeros(0)}
    joints = np.arange(NUM_JOINTS)
    rows, scores = [], []
    for xy, _, area in gt_people:
        best = joint_similarity(xy, keypoints[:, :, :2], area).argmax(0)  # (17,) detection index per joint
        chosen = keypoints[best, joints]  # (17, 3)
        rows.append(chosen)
        scores.append(chosen[:, 2].mean())
    return {"keypoints": np.stack(rows), "scores": np.asarray(scores)}


def gt_jitter_ap(gt_poses: PoseInput, height: Size, width: Size, jitter_px: float, seed: int = 0) -> dict[str, float]:
    """Keypoint AP/AR of the ground truth itself with N(0, jitter_px^2) noise on every x and y (one detection per
    GT person, score 1): the AP a detector with that localisation error and no other error would get."""
    rng = np.random.default_rng(seed)
    detections = []
    for image in _gt_people(gt_poses, height, width):
        rows = [
            np.concatenate([xy + rng.normal(0.0, jitter_px, xy.shape), np.ones((NUM_JOINTS, 1))], 1) for xy, *_ in image
        ]
        detections.append({"keypoints": np.asarray(rows).reshape(-1, NUM_JOINTS, 3), "scores": np.ones(len(rows))})
    return evaluate_keypoint_ap(gt_poses, detections, height, width, protocol="corrected")


def pose_error_breakdown(
    gt_poses: PoseInput,
    detections: Sequence[Detection],
    height: Size,
    width: Size,
    image_ids: Sequence[Hashable] | None = None,
    jitter_px: Sequence[float] = (1.0, 2.0, 3.0),
    seed: int = 0,
) -> dict[str, Any]:
    """AP (corrected protocol) as scored and under each oracle (docs/metrics.md §10).

    ``ap``: as scored. ``ap_matched_only``: every detection that matches no GT person dropped (greedy OKS
    matching, one detection per person), so the gap to ``ap`` is what extra detections cost.
    ``ap_oracle_grouping``: per GT person, each joint taken from whichever detection of the image has that joint
    nearest (in keypoint similarity); the gap to ``ap_matched_only`` is what grouping costs.
    ``ap_gt_jitter``: {pixels: AP of the jittered ground truth} (``gt_jitter_ap``).
    Per joint (COCO order): ``median_error_px`` (distance from each visible GT joint to the nearest detected joint
    of its type) and ``missed_fraction`` (share of visible GT joints with no detected joint of their type at
    keypoint similarity >= 0.5). Images without a GT person count only through their detections.
    """
    people = _people(gt_poses)
    if len(detections) != len(people):
        raise ValueError(f"{len(people)} GT images but {len(detections)} detection entries")
    gt_people = _gt_people(people, height, width)
    matched = [_matched_detections(g, d) for g, d in zip(gt_people, detections)]
    grouped = [_oracle_grouped(g, d) for g, d in zip(gt_people, detections)]

    errors, similarities = [], []  # per visible GT joint, keyed by joint index
    for image, det in zip(gt_people, detections):
        keypoints, _ = _detections(det)
        for xy, visible, area in image:
            if len(keypoints):
                distance = np.sqrt(((keypoints[:, :, :2] - xy) ** 2).sum(-1)).min(0)  # (17,)
                similarity = joint_similarity(xy, keypoints[:, :, :2], area).max(0)  # (17,)
            else:
                distance, similarity = np.full(NUM_JOINTS, np.inf), np.zeros(NUM_JOINTS)
            errors.append(np.where(visible, distance, np.nan))
            similarities.append(np.where(visible, similarity, np.nan))
    errors_arr = np.asarray(errors).reshape(-1, NUM_JOINTS)  # (GT people, 17)
    similar_arr = np.asarray(similarities).reshape(-1, NUM_JOINTS)
    counted = np.maximum((~np.isnan(similar_arr)).sum(0), 1)

    def ap(dets: Sequence[Detection]) -> dict[str, float]:
        return evaluate_keypoint_ap(people, dets, height, width, protocol="corrected", image_ids=image_ids)

    scored, only_matched, oracle = ap(detections), ap(matched), ap(grouped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a joint never visible in the GT: NaN
        median_error = np.nanmedian(errors_arr, axis=0)  # inf where an image has no detection at all
    return {
        "num_images": len(people),
        "num_gt": int(sum(len(g) for g in gt_people)),
        "num_det": int(sum(len(_detections(d)[1]) for d in detections)),
        "ap": scored["ap"],
        "ap50": scored["ap50"],
        "ap_matched_only": only_matched["ap"],
        "ap_oracle_grouping": oracle["ap"],
        "ap_gt_jitter": {float(px): gt_jitter_ap(people, height, width, float(px), seed)["ap"] for px in jitter_px},
        "median_error_px": [float(v) for v in median_error],
        "missed_fraction": [
            float(v) for v in (np.nan_to_num(similar_arr, nan=1.0) < MISSED_SIMILARITY).sum(0) / counted
        ],
    }
