"""grpose/metrics/error_breakdown.py: each oracle repairs exactly the error it names (docs/metrics.md §10)."""

from __future__ import annotations

import numpy as np
import pytest

from grpose.metrics.error_breakdown import gt_jitter_ap, joint_similarity, pose_error_breakdown

SIZE = 128


def _person(x0: float, y0: float) -> np.ndarray:
    """A standing figure (17, 3) about 50 px tall with its top-left near (x0, y0), every joint visible."""
    xy = np.array(
        [
            [10, 0], [8, -2], [12, -2], [6, 0], [14, 0],  # face
            [4, 8], [16, 8], [2, 18], [18, 18], [1, 27], [19, 27],  # arms
            [6, 28], [14, 28], [6, 40], [14, 40], [6, 50], [14, 50],  # legs
        ],
        dtype=np.float64,
    )  # fmt: skip
    return np.concatenate([xy + [x0, y0 + 2], np.full((17, 1), 2.0)], axis=1)


def _gt() -> list[np.ndarray]:
    """Three images with two figures each, side by side."""
    return [np.stack([_person(10 + i, 20), _person(70, 30 + i)]) for i in range(3)]


def _as_detections(poses: list[np.ndarray], score: float = 0.9) -> list[dict]:
    out = []
    for people in poses:
        keypoints = np.concatenate([people[:, :, :2], np.full((len(people), 17, 1), score)], axis=2)
        out.append({"keypoints": keypoints, "scores": np.full(len(people), score)})
    return out


def test_perfect_detections_score_one_everywhere():
    gt = _gt()
    row = pose_error_breakdown(gt, _as_detections(gt), SIZE, SIZE, jitter_px=(0.0,))
    assert row["ap"] == row["ap_matched_only"] == row["ap_oracle_grouping"] == pytest.approx(1.0)
    assert row["ap_gt_jitter"][0.0] == pytest.approx(1.0)
    assert row["median_error_px"] == [0.0] * 17 and row["missed_fraction"] == [0.0] * 17
    assert (row["num_images"], row["num_gt"], row["num_det"]) == (3, 6, 6)


def test_extra_detections_cost_ap_that_only_the_matched_only_oracle_recovers():
    gt = _gt()
    detections = _as_detections(gt, score=0.5)
    for det in detections:  # a confident ghost far from both figures, in every image
        ghost = _person(40, 70)[None].copy()
        ghost[:, :, 2] = 1.0
        det["keypoints"] = np.concatenate([det["keypoints"], ghost])
        det["scores"] = np.append(det["scores"], 1.0)
    row = pose_error_breakdown(gt, detections, SIZE, SIZE, jitter_px=())
    assert row["ap"] < 0.9
    assert row["ap_matched_only"] == pytest.approx(1.0)
    assert row["num_det"] == 9


def test_swapped_limbs_cost_ap_that_only_the_grouping_oracle_recovers():
    gt = _gt()
    detections = _as_detections(gt)
    for det in detections:  # the two figures' legs exchanged: every joint is found, grouped wrongly
        legs = slice(11, 17)
        first = det["keypoints"][0, legs].copy()
        det["keypoints"][0, legs] = det["keypoints"][1, legs]
        det["keypoints"][1, legs] = first
        ghost = _person(40, 70)[None].copy()  # and a faint ghost the oracle must not take joints from
        ghost[:, :, 2] = 0.1
        det["keypoints"] = np.concatenate([ghost, det["keypoints"]])
        det["scores"] = np.append(0.1, det["scores"])
    row = pose_error_breakdown(gt, detections, SIZE, SIZE, jitter_px=())
    assert row["ap"] < 0.5 and row["ap_matched_only"] < 0.5
    assert row["ap_oracle_grouping"] == pytest.approx(1.0)
    assert row["median_error_px"] == [0.0] * 17


def test_missing_joints_are_counted_per_joint_and_images_without_detections_count_as_missed():
    gt = _gt()
    detections = _as_detections(gt)
    for det in detections:
        det["keypoints"][:, 0, :2] += 30.0  # every nose far off
    detections[2] = {"keypoints": np.zeros((0, 17, 3)), "scores": np.zeros(0)}  # nothing found in the last image
    row = pose_error_breakdown(gt, detections, SIZE, SIZE, jitter_px=())
    assert row["missed_fraction"][0] == pytest.approx(1.0)
    assert row["missed_fraction"][5] == pytest.approx(2 / 6)  # the shoulders of the last image's two people
    assert row["median_error_px"][5] == pytest.approx(0.0)


def test_gt_jitter_ap_falls_with_the_noise_and_is_seeded():
    gt = _gt() * 10
    curve = [gt_jitter_ap(gt, SIZE, SIZE, px, seed=0)["ap"] for px in (0.0, 1.0, 3.0, 6.0)]
    assert curve[0] == pytest.approx(1.0)
    assert curve[0] >= curve[1] > curve[2] > curve[3]
    assert gt_jitter_ap(gt, SIZE, SIZE, 3.0, seed=0)["ap"] == curve[2]


def test_joint_similarity_is_cocos_per_joint_term():
    gt_xy = np.zeros((17, 2))
    det_xy = np.zeros((17, 2))
    det_xy[:, 0] = 2.0
    sigmas = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
                       0.89, 0.89]) / 10  # fmt: skip
    expected = np.exp(-4.0 / (2 * (2 * sigmas) ** 2 * 400.0))
    np.testing.assert_allclose(joint_similarity(gt_xy, det_xy, area=400.0), expected)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="3 GT images but 2 detection entries"):
        pose_error_breakdown(_gt(), _as_detections(_gt())[:2], SIZE, SIZE)
