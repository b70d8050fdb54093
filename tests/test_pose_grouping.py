"""Associative-embedding grouping: constructed scenes, the munkres 1.1.4 port, adjust, refine, flips and transforms."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from grpose.pose import grouping as G
from grpose.pose.assignment import munkres_1_1_4
from grpose.pose.estimator import image_meta
from grpose.pose.nms import oks_nms, people_to_results
from grpose.pose.refine import adjust_quarter, gaussian_blur3, refine_people
from grpose.pose.skeleton import COCO_FLIP_INDEX

from reference_forms import munkres_package, post_dark_udp, refine_person_literal

REF = Path(__file__).parent / "data" / "pose_reference"
MODELS = ("higherhrnet_w48_udp_seed0", "mobilenetv2_ae_seed0")


def _scene(people, size=64, sigma=1.5, num_joints=17):
    """Heatmaps (K,H,W) with a Gaussian per (person, joint) and tags (K,H,W,2) equal to the nearest person's tag.

    people: list of dicts {'joints': (K,2) int x,y, 'tag': float, 'peak': float, 'missing': {k: peak or 0}}.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    hm = np.zeros((num_joints, size, size), np.float32)
    tags = np.zeros((num_joints, size, size), np.float32)
    best = np.full((num_joints, size, size), np.inf, np.float32)
    for p in people:
        for k, (x, y) in enumerate(p["joints"]):
            peak = p.get("missing", {}).get(k, p["peak"])
            d2 = (xx - x) ** 2 + (yy - y) ** 2
            blob = peak * np.exp(-d2 / (2 * sigma**2))
            hm[k] = np.maximum(hm[k], np.where(d2 <= 9 * sigma**2, blob, 0))  # truncated at 3 sigma
            closer = d2 < best[k]
            tags[k][closer] = p["tag"]
            best[k] = np.minimum(best[k], d2)
    return torch.from_numpy(hm), torch.from_numpy(np.stack([tags, tags], axis=-1))


def _people(rng, n, size=64, tags=(0.0, 3.0, 6.0), peaks=(1.0, 0.9, 0.8)):
    out = []
    for i in range(n):
        x0 = 6 + 20 * i
        joints = np.stack([x0 + rng.integers(0, 10, 17), 4 + 3 * np.arange(17)], axis=1)
        out.append({"joints": joints, "tag": tags[i], "peak": peaks[i]})
    return out


def test_three_people_exact():
    people = _people(np.random.default_rng(0), 3)
    hm, tags = _scene(people)
    grouped, scores = G.parse(hm, tags, G.GroupingParams(), adjust=False, refine=False)
    assert grouped.shape == (3, 17, 5)
    for p, g in zip(people, grouped):  # insertion order = order of the first joint's peaks
        np.testing.assert_array_equal(g[:, :2], p["joints"])
        np.testing.assert_allclose(g[:, 2], p["peak"], rtol=1e-6)
        np.testing.assert_array_equal(g[:, 3], p["tag"])
    np.testing.assert_allclose(scores, [1.0, 0.9, 0.8], rtol=1e-6)
    # adjust moves every joint by a quarter step (+0.5 cell centre): within 0.75 px of the truth
    adjusted, _ = G.parse(hm, tags, G.GroupingParams(), adjust=True, refine=True)
    assert np.abs(adjusted[:, :, :2] - np.stack([p["joints"] for p in people])).max() <= 0.75


def test_missing_joint_and_refine():
    people = _people(np.random.default_rng(1), 3)
    people[1]["missing"] = {9: 0.05}  # below the detection threshold: not matched, but refine can recover it
    hm, tags = _scene(people)
    grouped, scores = G.parse(hm, tags, G.GroupingParams(), adjust=False, refine=False)
    assert grouped.shape == (3, 17, 5)
    assert grouped[1, 9, 2] == 0 and np.all(grouped[1, np.arange(17) != 9, 2] > 0)
    np.testing.assert_allclose(scores[1], 0.9 * 16 / 17, rtol=1e-6)
    refined, scores_r = G.parse(hm, tags, G.GroupingParams(), adjust=False, refine=True, use_udp=True)
    x, y = people[1]["joints"][9]
    assert abs(refined[1, 9, 0] - x) <= 0.25 and abs(refined[1, 9, 1] - y) <= 0.25
    np.testing.assert_allclose(refined[1, 9, 2], 0.05, rtol=1e-5)
    np.testing.assert_array_equal(scores_r, scores)  # scores are taken before refine
    # a fully absent joint stays absent: its best candidate lies at other people's tags (distance >= 3)
    people[1]["missing"] = {9: 0.0}
    hm, tags = _scene(people)
    refined, _ = G.parse(hm, tags, G.GroupingParams(), adjust=False, refine=True)
    assert refined[1, 9, 2] == 0


def test_close_tags_two_people():
    rng = np.random.default_rng(2)
    people = _people(rng, 2, tags=(0.0, 0.3), peaks=(1.0, 0.9))
    hm, tags = _scene(people)
    grouped, _ = G.parse(hm, tags, G.GroupingParams(), adjust=False, refine=False)
    # one candidate per group and joint: still two people, every joint used once, but the close tags let
    # the solver's tie-breaking (munkres 1.1.4) decide which joint goes where; the package agrees exactly
    assert grouped.shape == (2, 17, 5)
    truth = {tuple(j) for p in people for j in np.c_[np.arange(17), p["joints"]]}
    found = {(k, int(g[k, 0]), int(g[k, 1])) for g in grouped for k in range(17)}
    assert found == truth
    ref, _ = G.parse(hm, tags, G.GroupingParams(), adjust=False, refine=False, solver=munkres_package)
    np.testing.assert_array_equal(grouped, ref)
    # tags 1.6 apart round to 2: clean separation
    people = _people(rng, 2, tags=(0.0, 1.6), peaks=(1.0, 0.9))
    hm, tags = _scene(people)
    grouped, _ = G.parse(hm, tags, G.GroupingParams(), adjust=False, refine=False)
    for p, g in zip(people, grouped):
        np.testing.assert_array_equal(g[:, :2], p["joints"])


@pytest.mark.parametrize("model", MODELS)
def test_matching_replays_reference_exactly(model):
    """Reference top-k in -> mmpose's matched groups out, bit for bit; every solver call equals munkres 1.1.4."""
    ref = np.load(REF / f"{model}_core.npz")
    calls = []

    def both(cost):
        ours = munkres_1_1_4(cost)
        theirs = [(int(r), int(c)) for r, c in munkres_package(cost)]
        calls.append(ours == theirs)
        return ours

    for i in (0, 1):
        topk = [ref[f"img{i}_topk_{n}"][0] for n in ("tag", "loc", "val")]
        matched = G.match_by_tag(*topk, G.GroupingParams(), solver=both)
        np.testing.assert_array_equal(matched, ref[f"img{i}_matched"])
    assert calls and all(calls)


def test_munkres_port_random_ties():
    rng = np.random.default_rng(0)
    for shape in [(5, 5), (8, 20), (30, 30), (12, 12), (3, 40)]:
        for _ in range(5):
            cost = np.round(rng.random(shape) * 3) * 100 - rng.random((shape[0], 1))
            if rng.random() < 0.5:
                cost = np.round(rng.random(shape) * 2)  # heavy ties
            expected = [(int(r), int(c)) for r, c in munkres_package(cost)]
            assert munkres_1_1_4(cost) == expected


def test_top_k_nms_and_order():
    hm = torch.zeros(17, 16, 16)
    hm[0, 3, 4] = 0.9
    hm[0, 3, 5] = 0.5  # inside the 5x5 window of a higher peak: suppressed
    hm[0, 10, 12] = 0.7
    tags = torch.arange(17 * 16 * 16 * 2, dtype=torch.float32).view(17, 16, 16, 2)
    tag_k, loc_k, val_k = G.top_k(hm, tags, G.GroupingParams())
    assert val_k.shape == (17, 30) and loc_k.shape == (17, 30, 2) and tag_k.shape == (17, 30, 2)
    np.testing.assert_allclose(val_k[0, :3], [0.9, 0.7, 0.0])
    np.testing.assert_array_equal(loc_k[0, :2], [[4, 3], [12, 10]])
    np.testing.assert_array_equal(tag_k[0, 0], tags[0, 3, 4].numpy())


def test_adjust_quarter_offsets():
    hm = np.zeros((17, 8, 8), np.float32)
    hm[0, 4, 4] = 1.0
    hm[0, 4, 5] = 0.5  # right neighbour higher than left -> +0.25
    hm[0, 3, 4] = 0.5  # upper neighbour higher than lower -> y - 0.25
    people = np.zeros((1, 17, 5), np.float32)
    people[0, 0, :3] = (4, 4, 1.0)
    out = adjust_quarter(people, hm)
    np.testing.assert_array_equal(out[0, 0, :2], [4.75, 4.25])
    np.testing.assert_array_equal(out[0, 1, :2], [0, 0])  # val 0: untouched


def test_gaussian_blur_matches_cv2_and_dark_udp():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 9, 11)).astype(np.float32)
    ours = gaussian_blur3(maps)
    for m, o in zip(maps, ours):
        np.testing.assert_array_equal(o, cv2.GaussianBlur(m.copy(), (3, 3), 0))
    # DARK: a sampled Gaussian peak at (10.3, 7.6) is recovered from its integer maximum; heatmaps untouched
    yy, xx = np.mgrid[0:20, 0:24].astype(np.float64)
    hm = np.exp(-((xx - 10.3) ** 2 + (yy - 7.6) ** 2) / (2 * 2.0**2)).astype(np.float32)
    heatmaps = np.repeat(hm[None], 17, 0)
    before = heatmaps.copy()
    coords = np.tile(np.array([[10.0, 8.0]], np.float32), (1, 17, 1))
    out = post_dark_udp(coords, heatmaps)
    np.testing.assert_array_equal(heatmaps, before)
    np.testing.assert_allclose(out[0, 0], [10.3, 7.6], atol=0.1)


def test_refine_fast_equals_literal():
    rng = np.random.default_rng(3)
    for trial in range(16):
        h, w = (24, 20) if trial % 4 < 2 else (64, 72)  # large maps take the tag-binned exhaustive search
        hm = rng.standard_normal((17, h, w)).astype(np.float32) * 0.3
        if trial % 4 == 3:
            hm = np.abs(hm) * 0.01  # flat, low maps: nearly every pixel can win
        tags = (rng.standard_normal((17, h, w, 2)) * 2).astype(np.float32)
        if trial % 8 == 7:
            tags = np.round(tags)  # tags on the bin edges
        people = np.zeros((6, 17, 5), np.float32)
        for person in people:
            on = rng.random(17) < 0.4
            on[rng.integers(17)] = True
            person[on, 0] = rng.integers(0, w, on.sum())
            person[on, 1] = rng.integers(0, h, on.sum())
            person[on, 2] = rng.random(on.sum()) + 0.1
        use_udp = bool(trial % 2)
        fast = refine_people(hm, tags, people.copy(), use_udp, top=8 if trial % 3 == 0 else 4096)
        slow = np.stack([refine_person_literal(hm, tags, p.copy(), use_udp) for p in people])
        np.testing.assert_array_equal(fast, slow)


def test_flip_index_and_heatmap_flip():
    from grpose.pose.estimator import BottomUpPoseEstimator

    idx = np.array(COCO_FLIP_INDEX)
    np.testing.assert_array_equal(idx[idx], np.arange(17))
    est = BottomUpPoseEstimator.__new__(BottomUpPoseEstimator)
    est.flip_index = list(COCO_FLIP_INDEX)
    maps = torch.arange(17.0).view(1, 17, 1, 1) * 100 + torch.arange(6.0).view(1, 1, 1, 6)
    (back,) = est._flip_back([maps])
    # channel k of the result is channel flip_index[k] of the input, mirrored left-right
    for k in range(17):
        np.testing.assert_array_equal(back[0, k, 0], (100 * idx[k] + torch.arange(5.0, -1, -1)).numpy())


def test_udp_affine_transforms():
    meta = image_meta(512, 512, 512, use_udp=True)
    assert meta.base_size == (512, 512)
    np.testing.assert_array_equal(meta.center, [255.5, 255.5])
    np.testing.assert_array_equal(meta.scale, [511, 511])
    people = np.zeros((1, 17, 5), np.float32)
    people[0, :, 0] = np.arange(17) * 15
    people[0, :, 1] = 255
    out = G.group_to_image(people, meta.center, meta.scale, (256, 256), use_udp=True)
    np.testing.assert_allclose(out[0, :, 0], np.arange(17) * 15 * 511 / 255, rtol=1e-6)
    np.testing.assert_allclose(out[0, :, 1], 511, rtol=1e-6)
    # non-square: 448 (h) x 640 (w) -> network input 512 x 768 (docs/pose_pipeline.md §1.3)
    meta = image_meta(448, 640, 512, use_udp=True)
    assert meta.base_size == (768, 512)
    np.testing.assert_allclose(meta.scale, [767 / 511 * 447, 447])
    meta = image_meta(512, 512, 512, use_udp=False)
    np.testing.assert_array_equal(meta.center, [256, 256])
    np.testing.assert_allclose(meta.scale, [2.56, 2.56])
    out = G.group_to_image(people, meta.center, meta.scale, (512, 512), use_udp=False)
    np.testing.assert_array_equal(out, people)


def test_oks_nms():
    kp = np.zeros((3, 17, 3), np.float32)
    kp[0, :, 0] = np.arange(17) * 10
    kp[0, :, 1] = np.arange(17) * 5
    kp[1] = kp[0] + [1, 1, 0]  # near-duplicate of person 0
    kp[2] = kp[0] + [300, 0, 0]
    scores = np.array([0.5, 0.7, 0.6], np.float32)
    areas = np.full(3, 160 * 80, np.float32)
    np.testing.assert_array_equal(oks_nms(kp, scores, areas, 1.0), [1, 2, 0])  # 1.0: sort only
    np.testing.assert_array_equal(oks_nms(kp, scores, areas, 0.9), [1, 2])
    res = people_to_results(np.concatenate([kp, np.zeros((3, 17, 2), np.float32)], -1), scores, 0.9)
    assert res["keypoints"].shape == (2, 17, 3) and res["keypoints"].dtype == np.float32
    np.testing.assert_array_equal(res["scores"], scores[[1, 2]])
