"""Skeleton rendering (palette, limb pixels) and pose masks against slow reference loops."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as tv

from grpose.pose.masks import gaussian_blur, pose_masks
from grpose.pose.skeleton import (
    COCO_FLIP_INDEX,
    COCO_KEYPOINT_NAMES,
    LIMB_COLORS,
    LIMBS,
    hint_from_pose,
    render_skeleton,
)

# docs/release_behaviours.md §2.6
REFERENCE_COLORS = [
    (219, 94, 86), (219, 144, 86), (219, 194, 86), (194, 219, 86), (145, 219, 86), (95, 219, 86),
    (86, 219, 127), (86, 219, 177), (86, 211, 219), (86, 161, 219), (86, 111, 219), (111, 86, 219),
    (160, 86, 219), (210, 86, 219), (219, 86, 178), (219, 86, 128),
]  # fmt: skip


def _standing_pose() -> np.ndarray:
    """A frontal person in a 256x256 image, all joints far enough apart that limb midpoints are unambiguous."""
    xy = [
        (128, 30), (140, 22), (116, 22), (156, 30), (100, 30),  # nose, eyes, ears
        (170, 80), (86, 80), (200, 120), (56, 120), (220, 160), (36, 160),  # shoulders, elbows, wrists
        (150, 150), (106, 150), (160, 200), (96, 200), (165, 245), (91, 245),  # hips, knees, ankles
    ]  # fmt: skip
    pose = np.zeros((17, 3), np.float32)
    pose[:, :2] = xy
    pose[:, 2] = 0.9
    return pose


def test_constants():
    assert len(COCO_KEYPOINT_NAMES) == 17 and len(LIMBS) == 16
    assert list(LIMB_COLORS) == REFERENCE_COLORS
    assert all(isinstance(c, int) for color in LIMB_COLORS for c in color)
    for i, j in enumerate(COCO_FLIP_INDEX):
        assert COCO_FLIP_INDEX[j] == i
        name = COCO_KEYPOINT_NAMES[i]
        assert COCO_KEYPOINT_NAMES[j] == name.replace("left", "#").replace("right", "left").replace("#", "right")


def test_render_known_pose_limb_midpoints():
    pose = _standing_pose()
    image = render_skeleton(pose[None], 256, 256)
    assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
    for k in range(6, 16):  # limbs whose midpoints are not covered by a later limb
        a, b = LIMBS[k]
        mid = ((pose[a, :2] + pose[b, :2]) / 2).astype(int)
        assert tuple(image[mid[1], mid[0]]) == LIMB_COLORS[k], k
    assert tuple(image[5, 5]) == (0, 0, 0)
    # circle of radius 5 at the ankle, line of width 10
    assert tuple(image[245 + 4, 165]) == LIMB_COLORS[14]
    assert tuple(image[245 + 7, 165]) == (0, 0, 0)


def test_render_missing_and_threshold():
    pose = _standing_pose()
    pose[9] = (-1, -1, 0)  # left wrist missing: limb 8 (7-9) not drawn
    pose[10, 2] = 0.02  # right wrist at the threshold: limb 9 not drawn (needs score > threshold)
    image = render_skeleton(pose, 256, 256)
    assert tuple(image[140, 210]) == (0, 0, 0)
    assert tuple(image[140, 46]) == (0, 0, 0)
    assert np.array_equal(render_skeleton(np.full((3, 17, 3), -1.0), 32, 48), np.zeros((32, 48, 3), np.uint8))


def test_render_overwrite_order_canvas_and_hint():
    one = _standing_pose()
    two = one.copy()
    two[:, 0] += 3  # second person overlaps the first and is drawn last
    image = render_skeleton(np.stack([one, two]), 256, 256)
    mid = ((two[13, :2] + two[15, :2]) / 2).astype(int)
    assert tuple(image[mid[1], mid[0]]) == LIMB_COLORS[14]
    canvas = np.full((256, 256, 3), 7, np.uint8)
    drawn = render_skeleton(one, 256, 256, canvas=canvas)
    assert (canvas == 7).all() and tuple(drawn[0, 0]) == (7, 7, 7) and tuple(drawn[245, 165]) == LIMB_COLORS[14]
    hint = hint_from_pose(one[None], 256, 256)
    assert hint.dtype == np.float32 and hint.min() == -1.0 and hint.max() <= 1.0
    np.testing.assert_array_equal(hint, (render_skeleton(one, 256, 256) / 255 * 2 - 1).astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        render_skeleton(np.zeros((2, 16, 3)), 8, 8)


def _random_hints(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    hints = []
    for _ in range(batch):
        pose = np.stack([_standing_pose() for _ in range(2)])
        pose[..., 0] = rng.uniform(0, width, (2, 17))
        pose[..., 1] = rng.uniform(0, height, (2, 17))
        pose[..., 2] = rng.uniform(0, 1, (2, 17))
        hints.append(hint_from_pose(pose, height, width))
    return torch.from_numpy(np.stack(hints)).permute(0, 3, 1, 2).contiguous()


def _cells_from_pixels(marked: np.ndarray, f: int = 8) -> np.ndarray:
    b, h, w = marked.shape
    out = np.zeros((b, h // f, w // f), np.float32)
    for n in range(b):
        for i in range(h // f):
            for j in range(w // f):
                out[n, i, j] = float(marked[n, i * f : (i + 1) * f, j * f : (j + 1) * f].any())
    return out


def _dilation_reference(hint: torch.Tensor, radius: int) -> np.ndarray:
    """Slow loop: a pixel is marked when any pixel within Chebyshev distance ``radius`` is drawn (> -1)."""
    drawn = (hint.numpy() > -1).any(axis=1)
    b, h, w = drawn.shape
    marked = np.zeros_like(drawn)
    for n in range(b):
        ys, xs = np.nonzero(drawn[n])
        for y, x in zip(ys, xs):
            marked[n, max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = True
    return _cells_from_pixels(marked)


def test_blur_matches_torchvision():
    hint = _random_hints(2, 48, 40, seed=1)
    for k in (13, 23):
        ours = gaussian_blur(hint.double(), k, 3.0)
        ref = tv.gaussian_blur(hint.double(), [k, k], [3.0, 3.0])
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_masks_match_reference_loops():
    hint = _random_hints(3, 64, 96, seed=0)
    masks = pose_masks(hint)
    assert masks.shape == (2, 3, 8, 12) and masks.dtype == torch.float32
    np.testing.assert_array_equal(masks[0].numpy(), _dilation_reference(hint, 11))
    np.testing.assert_array_equal(masks[1].numpy(), _dilation_reference(hint, 6))
    # k=13: identical to the released computation (torchvision fp32 blur, "> -1", 8x8 any)
    released = (tv.gaussian_blur(hint, [13, 13], [3.0, 3.0]) > -1).any(dim=1).numpy()
    np.testing.assert_array_equal(masks[1].numpy(), _cells_from_pixels(released))
    # other dtypes and the empty skeleton
    np.testing.assert_array_equal(pose_masks(hint.half()).float().numpy(), masks.numpy())
    assert pose_masks(torch.full((1, 3, 16, 24), -1.0)).sum() == 0


def test_masks_other_threshold():
    """The inference threshold of the release (-0.99, docs/release_behaviours.md Q5) vs a float64 torchvision blur."""
    hint = _random_hints(2, 32, 48, seed=3)
    masks = pose_masks(hint, kernel_sizes=(13,), threshold=-0.99)
    blurred = tv.gaussian_blur(hint.double(), [13, 13], [3.0, 3.0])
    np.testing.assert_array_equal(masks[0].numpy(), _cells_from_pixels((blurred > -0.99).any(dim=1).numpy()))


def test_masks_bad_shapes():
    with pytest.raises(ValueError, match="multiple"):
        pose_masks(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match="B, C, H, W"):
        pose_masks(torch.zeros(3, 16, 16))
    assert pose_masks(torch.zeros(1, 3, 8, 8)).shape == (2, 1, 1, 1)  # reflect padding wider than the image
