"""PoseDataset: keypoints follow resize/crop/flip exactly, output format, determinism, caption dropout."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from grpose.data.pose_dataset import PoseDataset
from grpose.data.transforms import clean_pose, crop_geometry, resized_shape
from grpose.pose.skeleton import COCO_FLIP_INDEX, hint_from_pose


def _write_entry(root: Path, entry_id: str, image: np.ndarray, people: list, prompt: str = "a person") -> dict:
    img_rel, pose_rel = f"images/scene_a/{entry_id}.png", f"pose/scene_a/{entry_id}.npz"
    (root / img_rel).parent.mkdir(parents=True, exist_ok=True)
    (root / pose_rel).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / img_rel), image)
    people_array = np.empty(len(people), dtype=object)
    for i, keypoints in enumerate(people):
        people_array[i] = {"keypoints": np.asarray(keypoints, np.float32)}
    np.savez(root / pose_rel, arr_0=people_array)
    return {"img_path": img_rel, "prompt": prompt, "pose_path": pose_rel}


def _write_mapping(root: Path, mapping: dict) -> Path:
    path = root / "mapping.json"
    path.write_text(json.dumps(mapping))
    return path


def _dots_dataset(root: Path, height: int, width: int, dots: list[tuple[int, int]]) -> Path:
    """One image with white dots (radius 4) at integer keypoints 9 (left wrist), 5, 0, ... of one person."""
    image = np.zeros((height, width, 3), np.uint8)
    keypoints = np.zeros((17, 3), np.float32)
    for joint, (x, y) in zip((9, 5, 0, 15), dots):
        cv2.circle(image, (x, y), 4, (255, 255, 255), -1)
        keypoints[joint] = (x, y, 0.9)
    return _write_mapping(root, {"dots": _write_entry(root, "dots", image, [keypoints])})


def _centroid_near(jpg: np.ndarray, x: float, y: float, radius: int = 5) -> tuple[float, float]:
    white = jpg.mean(axis=2) > 0.0  # brighter than mid-grey
    ys, xs = np.mgrid[0 : jpg.shape[0], 0 : jpg.shape[1]]
    near = white & (np.abs(xs - x) <= radius) & (np.abs(ys - y) <= radius)
    assert near.any(), f"no dot near ({x:.1f}, {y:.1f})"
    weights = (jpg.mean(axis=2) + 1)[near]
    return float((xs[near] * weights).sum() / weights.sum()), float((ys[near] * weights).sum() / weights.sum())


@pytest.mark.parametrize(
    ("height", "width", "train", "flip"),
    [(150, 100, False, False), (90, 200, True, False), (120, 160, True, True), (64, 64, False, False)],
)
def test_keypoints_land_on_their_dots(tmp_path, height, width, train, flip):
    dots = [(12, 12), (width // 2, height // 2), (width - 14, height - 12), (width - 8, 12)]
    mapping = _dots_dataset(tmp_path, height, width, dots)
    for seed in range(4 if train else 1):
        ds = PoseDataset(mapping, image_size=48, train=train, random_flip=flip, caption_dropout=0.0, seed=seed)
        sample = ds[0]
        assert sample["jpg"].shape == (48, 48, 3) and sample["pose"].shape == (10, 17, 3)
        pose = sample["pose"][0]
        present = np.nonzero(pose[:, 2] > 0)[0]
        for joint in present:
            cx, cy = _centroid_near(sample["jpg"], pose[joint, 0], pose[joint, 1])
            assert abs(cx - pose[joint, 0]) <= 1.0 and abs(cy - pose[joint, 1]) <= 1.0, (joint, cx, cy, pose[joint])
        # every dot fully inside the crop has its keypoint (none lost), and absent people are (-1, -1, 0)
        assert (sample["pose"][1:] == np.array([-1, -1, 0], np.float32)).all()
        if not train:
            new_h, new_w = resized_shape(height, width, 48)
            top, left = (new_h - 48) // 2, (new_w - 48) // 2
            for joint, (x, y) in zip((9, 5, 0, 15), dots):
                scale = 48 / min(height, width)  # one factor for both axes, as albumentations' SmallestMaxSize
                cx, cy = x * scale - left, y * scale - top
                inside = 0 <= cx < 48 and 0 <= cy < 48
                assert (pose[joint, 2] > 0) == inside
                if inside:
                    assert pose[joint, 0] == pytest.approx(cx, abs=1e-4) and pose[joint, 1] == pytest.approx(
                        cy, abs=1e-4
                    )


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(333, 500, 512), (500, 333, 512), (1001, 1499, 512), (683, 1024, 512), (90, 200, 48), (77, 77, 48)],
)
def test_resize_scales_keypoints_by_one_factor_like_smallest_max_size(height, width, size):
    """albumentations 1.3.0 SmallestMaxSize: image to round(W*s) x round(H*s), keypoints times s on both axes."""
    s = size / min(height, width)
    new_h, new_w = resized_shape(height, width, size)
    assert (new_h, new_w) == (round(height * s), round(width * s))
    geometry = crop_geometry(height, width, size, rng=None)
    assert geometry.scale_x == geometry.scale_y == s
    assert (geometry.resized_height, geometry.resized_width) == (new_h, new_w)
    xs = np.linspace(0, width - 1, 9)
    ys = np.linspace(0, height - 1, 9)
    people = [np.stack([np.r_[xs, xs[:8]], np.r_[ys, ys[::-1][:8]], np.ones(17)], axis=1)]
    pose = clean_pose(people, height, width, geometry)[0]
    ex, ey = people[0][:, 0] * s - geometry.left, people[0][:, 1] * s - geometry.top
    inside = (ex >= 0) & (ex < size) & (ey >= 0) & (ey < size)
    assert inside.any() and ((pose[:, 2] > 0) == inside).all()
    assert pose[inside, 0] == pytest.approx(ex[inside].astype(np.float32), abs=1e-4)
    assert pose[inside, 1] == pytest.approx(ey[inside].astype(np.float32), abs=1e-4)
    if (new_w / width, new_h / height) != (s, s):  # the per-axis ratios of the rounded size would differ
        rx = people[0][inside, 0] * new_w / width - geometry.left
        ry = people[0][inside, 1] * new_h / height - geometry.top
        assert max(np.abs(rx - pose[inside, 0]).max(), np.abs(ry - pose[inside, 1]).max()) > 1e-3


def test_flip_swaps_left_and_right(tmp_path):
    mapping = _dots_dataset(tmp_path, 64, 64, [(10, 20), (30, 30)])
    plain = PoseDataset(mapping, image_size=64, train=True, random_flip=False, seed=0)[0]
    flips = [PoseDataset(mapping, image_size=64, train=True, random_flip=True, seed=s)[0] for s in range(8)]
    flipped = [s for s in flips if s["pose"][0, COCO_FLIP_INDEX[9], 2] > 0]
    assert flipped, "no flip in 8 seeds"
    sample = flipped[0]
    assert sample["pose"][0, 9, 2] == 0 and sample["pose"][0, 10, 0] == 63 - plain["pose"][0, 9, 0]
    np.testing.assert_array_equal(sample["jpg"], plain["jpg"][:, ::-1])
    np.testing.assert_array_equal(sample["hint"], hint_from_pose(sample["pose"], 64, 64))


def test_filtering_people_and_thresholds(tmp_path):
    image = np.full((100, 100, 3), 128, np.uint8)
    people = []
    for p in range(12):
        keypoints = np.zeros((17, 3), np.float32)
        keypoints[:, :2] = (10 + 5 * p, 50)
        keypoints[:, 2] = 0.5
        people.append(keypoints)
    people[0][1, 2] = 0.02  # at the threshold: missing
    people[0][2, 2] = 0.021
    people[0][3, :2] = (150, 50)  # outside the original image
    people[0][4, :2] = (-3, 50)
    people[0][5, :2] = (np.nan, 10)
    mapping = _write_mapping(tmp_path, {"many": _write_entry(tmp_path, "many", image, people, prompt="crowd")})
    sample = PoseDataset(mapping, image_size=100, train=False)[0]
    pose = sample["pose"]
    assert pose.dtype == np.float32 and pose.shape == (10, 17, 3)
    assert (pose[:, 0, 2] == 0.5).all()  # first 10 people kept
    missing = np.array([-1, -1, 0], np.float32)
    for joint in (1, 3, 4, 5):
        np.testing.assert_array_equal(pose[0, joint], missing)
    assert pose[0, 2, 2] == pytest.approx(0.021)
    assert sample["txt"] == "crowd" and sample["id"] == "many" and sample["scene"] == "scene_a"
    assert sample["img_path"] == "images/scene_a/many.png"
    assert sample["jpg"].dtype == np.float32 and sample["jpg"].min() >= -1 and sample["jpg"].max() <= 1
    assert sample["jpg"][0, 0, 0] == np.float32(128 / 255 * 2 - 1)


def test_eval_is_deterministic_and_train_random(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 180, 3), dtype=np.uint8)
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:, 0] = np.linspace(5, 170, 17)
    keypoints[:, 1] = 45
    keypoints[:, 2] = 1
    mapping = _write_mapping(tmp_path, {"x": _write_entry(tmp_path, "x", image, [keypoints], prompt="p")})
    a = PoseDataset(mapping, image_size=32, train=False)
    b = PoseDataset(mapping, image_size=32, train=False, seed=5)
    for key in ("jpg", "hint", "pose"):
        np.testing.assert_array_equal(a[0][key], b[0][key])
        np.testing.assert_array_equal(a[0][key], a[0][key])
    assert all(a[0]["txt"] == "p" for _ in range(5))  # no caption dropout in evaluation
    train = PoseDataset(mapping, image_size=32, train=True, caption_dropout=0.5, seed=0)
    torch.manual_seed(0)
    samples = [train[0] for _ in range(30)]
    assert len({s["jpg"].tobytes() for s in samples}) > 3  # random crops
    assert len({float(s["pose"][0, 8, 0]) for s in samples}) > 3
    texts = [s["txt"] for s in samples]
    assert 5 < texts.count("") < 25 and set(texts) == {"", "p"}
    train2 = PoseDataset(mapping, image_size=32, train=True, caption_dropout=0.5, seed=0)
    torch.manual_seed(0)  # augmentation follows torch's RNG (restored on resume, seeded per DataLoader worker)
    np.testing.assert_array_equal(train2[0]["jpg"], samples[0]["jpg"])
    always = PoseDataset(mapping, image_size=32, train=True, caption_dropout=1.0)
    assert always[0]["txt"] == ""


def test_constructor_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        PoseDataset(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        PoseDataset(bad)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match="no entries"):
        PoseDataset(empty)
    mapping = _dots_dataset(tmp_path, 40, 40, [(5, 5)])
    with pytest.raises(ValueError, match="on_error"):
        PoseDataset(mapping, on_error="ignore")
    assert PoseDataset(mapping, limit=0 + 1).ids == ["dots"]
