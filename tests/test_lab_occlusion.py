"""Joints hidden behind later figures (grpose/lab/occlusion.py): found where a later mask covers them, and costed."""

from __future__ import annotations

import numpy as np
import pytest

from grpose.data.synthetic import SyntheticSample, synthetic_samples
from grpose.lab.occlusion import hidden_joints, occlusion_oracle


def _standing_person(x0: float) -> dict[str, np.ndarray]:
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:, 0] = x0 + np.arange(17) % 3 * 4.0
    keypoints[:, 1] = 20.0 + np.arange(17) * 5.0
    keypoints[:, 2] = 0.9
    return {"keypoints": keypoints, "bbox": np.zeros(4, np.float32)}


def _sample(masks: list[np.ndarray], people: list[dict]) -> SyntheticSample:
    image = np.zeros((128, 128, 3), np.uint8)
    return SyntheticSample(0, "cartoon", "000000", image, people, "", True, masks)


def test_a_joint_under_a_later_figure_is_hidden_and_one_under_an_earlier_is_not():
    first, second = _standing_person(30.0), _standing_person(70.0)
    cover_first = np.zeros((128, 128), np.uint8)
    x, y = first["keypoints"][9, :2].astype(int)
    cover_first[y - 1 : y + 2, x - 1 : x + 2] = 255  # the second person's paint over the first's left wrist
    cover_second = np.zeros((128, 128), np.uint8)
    x2, y2 = second["keypoints"][9, :2].astype(int)
    cover_second[y2, x2] = 255  # painted by the first person, drawn before: under the second, not over it
    pose, hidden = hidden_joints(_sample([cover_second, cover_first], [first, second]), crop_size=128)
    assert hidden[0].nonzero()[0].tolist() == [9] and not hidden[1].any() and not hidden[2:].any()
    assert pose[0, 9, 2] > 0  # still annotated, as COCO annotates occluded joints
    half = cover_first.copy()
    half[y, x] = 100  # under half covered: seen
    assert not hidden_joints(_sample([cover_second, half], [first, second]), crop_size=128)[1].any()


def test_samples_without_masks_are_refused():
    sample = _sample(None, [_standing_person(30.0)])
    with pytest.raises(ValueError, match="masks=True"):
        hidden_joints(sample, crop_size=128)


def test_oracle_is_perfect_on_one_person_crops_and_loses_ap_only_where_joints_are_hidden():
    samples = list(synthetic_samples(60, seed=5, image_size=(152, 144), val_fraction=0.1, masks=True))
    row = occlusion_oracle(samples, crop_size=128)
    assert row["crops"] == 60 and row["by_people"][1]["hidden_share"] == 0.0
    assert row["by_people"][1]["ap"] == pytest.approx(1.0)
    assert row["by_people"][3]["hidden_share"] > 0.0 and row["ap"] < 1.0
    assert row["by_people"][3]["hidden_share"] >= row["by_people"][2]["hidden_share"]
