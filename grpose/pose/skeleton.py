"""COCO-17 skeleton: keypoint names, the 16 GRPose/HumanSD limbs and their colours, and skeleton rendering."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

# COCO-17 keypoint order (docs/pose_pipeline.md §2.1).
COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# The 16 limbs of the HumanSD skeleton used by GRPose, in drawing order (docs/release_behaviours.md §2.6). No
# shoulder-shoulder, hip-hip or neck edges; the ears connect to the shoulders.
LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (5, 11),
    (6, 12),
    (11, 13),
    (12, 14),
    (13, 15),
    (14, 16),
)

# Index of the mirrored joint: a horizontal flip maps joint i to COCO_FLIP_INDEX[i].
COCO_FLIP_INDEX: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

# Per-keypoint OKS sigmas as mmpose's COCO dataset_info writes them (0.026, ...), used by pose NMS
# (docs/pose_pipeline.md §2.1). grpose/metrics keeps pycocotools' float form of the same table, [.26, ...] / 10,
# which differs in the last bit (<= 1.4e-17): each side matches its reference implementation bit for bit.
COCO_SIGMAS = np.array(
    [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087]
    + [0.089, 0.089]
)


def _hls_palette(num_colors: int, h: float = 0.01, l: float = 0.6, s: float = 0.65) -> tuple[tuple[int, int, int], ...]:
    """seaborn's ``color_palette("hls", n)``: hues i/n + h, fixed lightness/saturation, as int(255*c) RGB."""
    hues = (np.linspace(0.0, 1.0, num_colors + 1)[:-1] + h) % 1.0
    colors = []
    for hue in hues:
        rgb = colorsys.hls_to_rgb(float(hue), l, s)
        colors.append(tuple(int(255 * c) for c in rgb))
    return tuple(colors)


# Limb i is drawn with colour i (docs/release_behaviours.md §2.6 table).
LIMB_COLORS: tuple[tuple[int, int, int], ...] = _hls_palette(len(LIMBS))


def _present(point: np.ndarray, threshold: float) -> bool:
    """A keypoint is present when its coordinates are not the (-1, -1) placeholder and its score > threshold."""
    x, y, score = float(point[0]), float(point[1]), float(point[2])
    if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(score)):
        return False
    return x != -1 and y != -1 and score > threshold


def render_skeleton(
    pose: np.ndarray,
    height: int,
    width: int,
    thickness: int = 10,
    threshold: float = 0.02,
    canvas: np.ndarray | None = None,
) -> np.ndarray:
    """Draw COCO-17 skeletons as in the GRPose release (``plot_kpts``, docs/release_behaviours.md §2.6).

    ``pose`` is (P, 17, 3) (x, y, score) in pixels; a (17, 3) array is one person. For every person in order
    and every limb in ``LIMBS`` order, when both ends are present (x, y != -1 and score > ``threshold``) a
    ``cv2.line`` of width ``thickness`` between the ``int()``-truncated end points is drawn, then filled
    circles of radius ``thickness // 2`` at both ends, in the limb's ``LIMB_COLORS`` colour; later limbs and
    people overwrite earlier ones. Returns a new uint8 (H, W, 3) RGB image: black, or a copy of ``canvas``
    (uint8 (H, W, 3) RGB, e.g. a generated image) drawn over. Unlike the release, a person is never skipped
    because ``np.sum(pose) <= 0`` (docs/release_behaviours.md Q14); only the per-limb presence test applies.
    """
    pose = np.asarray(pose, dtype=np.float64)
    if pose.ndim == 2:
        pose = pose[None]
    if pose.ndim != 3 or pose.shape[1:] != (len(COCO_KEYPOINT_NAMES), 3):
        raise ValueError(f"render_skeleton expects pose of shape (P, 17, 3) or (17, 3), got {pose.shape}")
    if canvas is None:
        image = np.zeros((height, width, 3), dtype=np.uint8)
    else:
        if canvas.dtype != np.uint8 or canvas.shape != (height, width, 3):
            raise ValueError(
                f"canvas must be uint8 of shape {(height, width, 3)}, got {canvas.dtype} {canvas.shape}; "
                "convert a [-1, 1] float image with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)"
            )
        image = np.ascontiguousarray(canvas).copy()
    radius = thickness // 2
    for person in pose:
        for (a, b), color in zip(LIMBS, LIMB_COLORS):
            if not (_present(person[a], threshold) and _present(person[b], threshold)):
                continue
            pa = (int(person[a, 0]), int(person[a, 1]))
            pb = (int(person[b, 0]), int(person[b, 1]))
            cv2.line(image, pa, pb, color, thickness)
            cv2.circle(image, pa, radius, color, -1)
            cv2.circle(image, pb, radius, color, -1)
    return image


# uint8 -> [-1, 1] float32, computed as the release does (x / 255 * 2 - 1 in float64, then float32).
UINT8_TO_UNIT = (np.arange(256, dtype=np.float64) / 255 * 2 - 1).astype(np.float32)


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Map a uint8 image to float32 in [-1, 1] exactly as ``image / 255 * 2 - 1`` (table lookup, fast)."""
    if image.dtype != np.uint8:
        raise ValueError(f"to_unit_range expects a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return cv2.LUT(image, UINT8_TO_UNIT)  # same values as np.take, about twice as fast
    return np.take(UINT8_TO_UNIT, image)


def hint_from_pose(pose: np.ndarray, height: int, width: int) -> np.ndarray:
    """The pose condition ("hint"): the rendered skeleton as float32 (H, W, 3) in [-1, 1], background -1."""
    return to_unit_range(render_skeleton(pose, height, width))
