"""Tests of grpose.metrics.pose against pycocotools and released-vs-corrected cases (docs/metrics.md, Q16-Q21)."""

import contextlib
import copy
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from grpose.metrics.cocoeval import XtCOCOeval
from grpose.metrics.pose import (
    COCO_SIGMAS,
    STAT_KEYS,
    dt_annotations,
    evaluate_cap,
    evaluate_keypoint_ap,
    evaluate_pose_alignment,
    gt_annotations,
    pce,
    per_scene,
    weighted_cosine_similarity,
)

MISSING = (-1.0, -1.0, 0.0)


def _person(rng: np.random.Generator, cx: float, cy: float, half: float = 60.0) -> np.ndarray:
    kp = np.ones((17, 3))
    kp[:, 0] = cx + rng.uniform(-half, half, 17)
    kp[:, 1] = cy + rng.uniform(-2 * half, 2 * half, 17)
    return kp


def _empty(n: int, slots: int = 3) -> np.ndarray:
    poses = np.zeros((n, slots, 17, 3))
    poses[...] = MISSING
    return poses


def _perfect(poses: np.ndarray, score: float = 0.9) -> list[dict]:
    out = []
    for img in poses:
        people = img[(img[..., 0] > 0).any(-1)]
        out.append({"keypoints": people.copy(), "scores": np.full(len(people), score)})
    return out


def _silent_eval(gt: dict, dts: list) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dts))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _random_set(seed: int = 0, n: int = 6):
    rng = np.random.default_rng(seed)
    gt = _empty(n)
    dets = []
    for i in range(n):
        for p in range(1 + i % 3):
            gt[i, p] = _person(rng, 90 + 150 * p, 250, half=30 + 15 * p)
        gt[i, 0, 4] = MISSING
        kps = gt[i][(gt[i][..., 0] > 0).any(-1)].copy()
        kps[..., :2] += rng.normal(0, 4, kps[..., :2].shape)
        kps[..., 2] = rng.uniform(0.2, 1, kps.shape[:2])
        extra = _person(rng, 400, 300)[None]
        dets.append({"keypoints": np.concatenate([kps, extra]), "scores": rng.uniform(0.1, 1, len(kps) + 1)})
    return gt, dets


def test_perfect_detections_give_ap_one():
    rng = np.random.default_rng(1)
    gt = _empty(4)
    for i in range(4):
        gt[i, 0] = _person(rng, 200, 250)
    res = evaluate_keypoint_ap(gt, _perfect(gt), 512, 512, protocol="corrected")
    assert res["ap"] == pytest.approx(1.0) and res["ar"] == pytest.approx(1.0)
    assert set(res) == set(STAT_KEYS)


def test_ap_equals_pycocotools_directly():
    gt, dets = _random_set()
    ours = evaluate_keypoint_ap(gt, dets, 512, 512, protocol="corrected")
    # reference: the same GT dict, detections through pycocotools' own loadRes
    gt_dict = gt_annotations(gt, None, 512, 512, "corrected")
    raw = [
        {"image_id": i, "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": float(s)}
        for i, d in enumerate(dets)
        for kp, s in zip(d["keypoints"], d["scores"])
    ]
    ref = _silent_eval(gt_dict, raw).stats[:10]
    assert [ours[k] for k in STAT_KEYS] == pytest.approx(list(ref))
    assert 0.0 < ours["ap"] < 1.0


def _oks_by_hand(gt_kp: np.ndarray, dt_kp: np.ndarray, area: float) -> float:
    vis = gt_kp[:, 2] > 0
    d2 = ((gt_kp[:, :2] - dt_kp[:, :2]) ** 2).sum(1)
    e = d2 / (2 * (2 * COCO_SIGMAS) ** 2 * (area + np.spacing(1)))
    return float(np.exp(-e[vis]).mean())


@pytest.mark.parametrize("protocol", ["corrected", "released"])
def test_oks_of_shifted_joint_matches_hand_value_and_protocol_area(protocol):
    rng = np.random.default_rng(2)
    gt = _empty(1, slots=1)
    gt[0, 0] = _person(rng, 250, 250)
    gt[0, 0, 0] = MISSING  # a missing joint: (-1, -1) placeholder enters the released box
    det = gt[0, 0].copy()
    det[9, :2] += (3.0, 4.0)  # d = 5 px on the left wrist
    gt_dict = gt_annotations(gt, None, 512, 512, protocol)
    ann = gt_dict["annotations"][0]
    rows = gt[0, 0] if protocol == "released" else gt[0, 0][gt[0, 0, :, 2] > 0]
    w, h = np.ptp(rows[:, 0]), np.ptp(rows[:, 1])
    assert ann["area"] == pytest.approx(w * h)
    assert ann["bbox"] == pytest.approx([rows[:, 0].min(), rows[:, 1].min(), w, h])
    ev = _silent_eval(gt_dict, dt_annotations([{"keypoints": det[None], "scores": [0.9]}]))
    assert ev.ious[0, 1][0, 0] == pytest.approx(_oks_by_hand(gt[0, 0], det, w * h))
    # the released box (placeholders included) is larger, so the same error gives a higher OKS
    other = "corrected" if protocol == "released" else "released"
    area_other = gt_annotations(gt, None, 512, 512, other)["annotations"][0]["area"]
    assert (ann["area"] > area_other) == (protocol == "released")


def test_released_gt_id_zero_is_matched_as_in_xtcocotools():
    # the release scored with xtcocotools (-1 = unmatched): the GT person with annotation id 0 counts normally
    rng = np.random.default_rng(3)
    gt = _empty(4, slots=2)
    for i in range(4):
        gt[i, 0] = _person(rng, 200, 250)
    assert gt_annotations(gt, None, 512, 512, "released")["annotations"][0]["id"] == 0
    assert gt_annotations(gt, None, 512, 512, "corrected")["annotations"][0]["id"] == 1
    dets = _perfect(gt)
    for protocol in ("corrected", "released"):
        res = evaluate_keypoint_ap(gt, dets, 512, 512, protocol)
        assert res["ap"] == pytest.approx(1.0) and res["ar"] == pytest.approx(1.0)
        assert evaluate_cap(gt, dets, 512, 512, protocol, slip=False)["ap"] == pytest.approx(1.0)
    batch = evaluate_pose_alignment(gt, dets, 512, 512, "released", batch_size=4)
    assert batch["ap_batch_mean"] == pytest.approx(1.0) and batch["ap"] == pytest.approx(1.0)
    # pycocotools' 0 sentinel would have lost that match (the behaviour we no longer reproduce)
    raw = dt_annotations(dets)
    assert _silent_eval(gt_annotations(gt, None, 512, 512, "released"), raw).stats[0] < 0.6


def test_xtcocoeval_matching_is_independent_of_the_id_values():
    """Released ids (from 0) under XtCOCOeval give the same matches and stats as the same GT renumbered from 1
    under pycocotools, and XtCOCOeval equals pycocotools whenever ids start at 1."""
    gt, dets = _random_set(seed=11, n=8)
    released = gt_annotations(gt, None, 512, 512, "released")
    assert min(a["id"] for a in released["annotations"]) == 0
    shifted = copy.deepcopy(released)
    for a in shifted["annotations"]:
        a["id"] += 1
    raw = dt_annotations(dets)
    ref = _silent_eval(shifted, raw).stats[:10]
    ours = evaluate_keypoint_ap(gt, dets, 512, 512, "released")
    assert [ours[k] for k in STAT_KEYS] == pytest.approx(list(ref), abs=0)
    assert 0.0 < ours["ap"] < 1.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(shifted)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(raw))
        xt = XtCOCOeval(coco_gt, coco_dt, "keypoints")
        xt.evaluate()
        xt.accumulate()
        xt.summarize()
    assert list(xt.stats[:10]) == pytest.approx(list(ref), abs=0)
    gt_ids = {a["id"] for a in shifted["annotations"]} | {-1}
    assert all(set(np.unique(e["dtMatches"])) <= gt_ids for e in xt.evalImgs if e is not None)


def test_cap_slip_ignores_detected_y_order():
    rng = np.random.default_rng(4)
    gt = _empty(1, slots=1)
    gt[0, 0] = _person(rng, 250, 250)
    gt[0, 0, 1::2, 1] -= 120  # left joints high, right joints low: a y swap is a large error
    gt[0, 0, 2::2, 1] += 120
    det = gt[0, 0].copy()
    # swap y between left/right joints (equal sigmas): same y values after sigma weighting, wrong pose
    for a in range(1, 17, 2):
        det[[a, a + 1], 1] = det[[a + 1, a], 1]
    perfect_slip = weighted_cosine_similarity(gt[0, 0], gt[0, 0], slip=True, nan_policy="released")
    assert weighted_cosine_similarity(gt[0, 0], det, slip=True, nan_policy="released") == pytest.approx(perfect_slip)
    assert weighted_cosine_similarity(gt[0, 0], gt[0, 0], slip=False, nan_policy="corrected") == pytest.approx(1.0)
    wrong = weighted_cosine_similarity(gt[0, 0], det, slip=False, nan_policy="corrected")
    assert wrong < 0.9
    kw = {"height": 512, "width": 512, "protocol": "released"}
    ok = {"keypoints": gt[0, :1], "scores": [0.9]}
    bad = {"keypoints": det[None], "scores": [0.9]}
    assert evaluate_cap(gt, [bad], slip=True, **kw) == evaluate_cap(gt, [ok], slip=True, **kw)
    assert evaluate_cap(gt, [bad], slip=False, **kw)["ap"] < evaluate_cap(gt, [ok], slip=False, **kw)["ap"]


def test_cap_zero_range_nan_counts_as_match_only_when_released():
    gt = _empty(1, slots=1)
    gt[0, 0, 5] = (200.0, 220.0, 1.0)  # one visible joint: every min-max range is zero
    gt[0, 0, 6] = (260.0, 300.0, 0.0)  # x > 0 but score 0: makes a (released) box, not visible
    det = np.tile(np.array([[10.0, 10.0, 0.5]]), (17, 1))
    det[:, 0] += np.arange(17)
    assert math.isnan(weighted_cosine_similarity(gt[0, 0], det, slip=True, nan_policy="released"))
    assert weighted_cosine_similarity(gt[0, 0], det, slip=True, nan_policy="corrected") == 0.0
    dets = [{"keypoints": det[None], "scores": [0.9]}]
    assert evaluate_cap(gt, dets, 512, 512, "released")["ap"] == pytest.approx(1.0)
    assert evaluate_cap(gt, dets, 512, 512, "corrected")["ap"] == pytest.approx(0.0)


def test_pce_released_q20_with_image_without_gt():
    gt_counts, det_counts = [0, 2, 1, 1], [1, 2, 0, 1]
    assert pce(gt_counts, det_counts, "corrected") == pytest.approx(0.5)
    # 3 images have GT -> positions 0, 1, 2 are compared: |0-1|, |2-2|, |1-0|
    assert pce(gt_counts, det_counts, "released") == pytest.approx(2 / 3)
    # a batch without any GT is NaN in the release and skipped in the row mean
    # first batch: 2 images have GT -> positions 0, 1 (both without GT) are compared: (1 + 0) / 2
    assert pce([0, 0, 2, 1, 0, 0, 0, 0], [1, 0, 2, 1, 3, 0, 0, 1], "released") == pytest.approx(0.5)
    assert pce([0, 0, 2, 1, 0, 0, 0, 0], [1, 0, 2, 1, 3, 0, 0, 1], "corrected") == pytest.approx(5 / 8)


def test_batch_mean_differs_from_whole_set_ap():
    rng = np.random.default_rng(5)
    gt = _empty(8, slots=1)
    for i in range(8):
        gt[i, 0] = _person(rng, 250, 250)
    dets = _perfect(gt, score=0.5)
    for i in range(4, 8):
        dets[i]["scores"] = np.array([0.1])
    junk = _person(rng, 100, 300)[None]
    dets[4] = {"keypoints": np.concatenate([dets[4]["keypoints"], junk]), "scores": np.array([0.1, 0.99])}
    res = evaluate_pose_alignment(gt, dets, 512, 512, "corrected", batch_size=4)
    assert res["ap_batch_mean"] == pytest.approx((1.0 + 0.8) / 2, abs=1e-6)
    assert res["ap"] == pytest.approx(8 / 9, abs=1e-6)
    assert res["num_batches"] == 2 and res["pce"] == pytest.approx(1 / 8)


def test_batch_rows_with_minus_one():
    rng = np.random.default_rng(6)
    gt = _empty(2, slots=1)
    gt[0, 0] = _person(rng, 250, 250, half=60)  # large
    gt[1, 0] = _person(rng, 250, 250, half=20)  # medium (area between 32^2 and 96^2)
    dets = _perfect(gt)
    rel = evaluate_pose_alignment(gt, dets, 512, 512, "released", batch_size=1)
    cor = evaluate_pose_alignment(gt, dets, 512, 512, "corrected", batch_size=1)
    # released: the first image has no medium person, its ap_m row is -1 and is averaged in
    assert rel["ap_m_batch_mean"] == pytest.approx((-1 + 1) / 2)
    assert rel["ap_l_batch_mean"] == pytest.approx((1 + -1) / 2) and rel["ap_batch_mean"] == pytest.approx(1.0)
    assert cor["ap_m_batch_mean"] == pytest.approx(1.0) and cor["ap_l_batch_mean"] == pytest.approx(1.0)


def test_whole_set_metrics_independent_of_image_order():
    gt, dets = _random_set(seed=7, n=8)
    names = [f"img{i:02d}" for i in range(8)]
    perm = np.random.default_rng(0).permutation(8)
    whole = [*STAT_KEYS, "cap", "cap_corrected", "car", "car_corrected", "num_gt", "num_det"]
    for protocol in ("corrected", "released"):
        a = evaluate_pose_alignment(gt, dets, 512, 512, protocol, image_ids=names)
        b = evaluate_pose_alignment(
            gt[perm], [dets[i] for i in perm], 512, 512, protocol, image_ids=[names[i] for i in perm]
        )
        assert {k: a[k] for k in whole} == {k: b[k] for k in whole}
    c = evaluate_pose_alignment(gt, dets, 512, 512, "corrected", image_ids=names)
    d = evaluate_pose_alignment(gt[perm], [dets[i] for i in perm], 512, 512, "corrected")
    assert c["pce"] == d["pce"]


def test_per_scene_matches_subsets_and_handles_no_detections():
    gt, dets = _random_set(seed=8, n=6)
    dets[5] = {"keypoints": np.zeros((0, 17, 3)), "scores": np.zeros(0)}
    scenes = ["b", "a", "b", "a", "a", "b"]
    res = per_scene(scenes, gt, dets, 512, 512, "corrected")
    assert list(res) == ["a", "b"]
    idx = [1, 3, 4]
    ref = evaluate_pose_alignment(gt[idx], [dets[i] for i in idx], 512, 512, "corrected")
    assert res["a"] == ref
    none = evaluate_keypoint_ap(gt[:2], [dets[5], dets[5]], 512, 512)
    assert none["ap"] == 0.0 and none["ar"] == 0.0
    with pytest.raises(ValueError, match="protocol"):
        evaluate_keypoint_ap(gt, dets, 512, 512, protocol="paper")
