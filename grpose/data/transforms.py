"""Image/keypoint geometry of the data pipeline: shorter-side resize, square crop, horizontal flip, pose cleanup."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from grpose.pose.skeleton import COCO_FLIP_INDEX

MISSING_KEYPOINT = (-1.0, -1.0, 0.0)


@dataclass(frozen=True)
class CropGeometry:
    """Where the output square comes from: keypoint resize factors, resized size and the crop's top-left corner.

    As albumentations' ``SmallestMaxSize`` (1.3.0, used by the release), keypoints are scaled by the one factor
    ``size / min(H, W)`` on both axes, not by the per-axis ratios of the rounded image size (they differ by up to
    half a pixel on the long axis), so ``scale_x == scale_y``.
    """

    scale_x: float
    scale_y: float
    resized_width: int
    resized_height: int
    left: int
    top: int
    size: int


def resize_scale(height: int, width: int, size: int) -> float:
    """The shorter-side resize factor ``size / min(H, W)`` (image and keypoints, albumentations SmallestMaxSize)."""
    return size / min(height, width)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_height, new_width) with the shorter side = ``size`` (albumentations SmallestMaxSize rounding)."""
    scale = resize_scale(height, width, size)
    return int(round(height * scale)), int(round(width * scale))


def crop_geometry(height: int, width: int, size: int, rng: np.random.Generator | None) -> CropGeometry:
    """Resize factors and crop corner for an image of ``height`` x ``width`` (docs/release_behaviours.md §2.3).

    ``rng`` given: random crop, corner ``int((L - size + 1) * u)`` with u ~ U[0, 1) as albumentations'
    RandomCrop; ``rng=None``: centre crop ``(L - size) // 2`` (deterministic evaluation,
    docs/release_behaviours.md Q14).
    """
    new_h, new_w = resized_shape(height, width, size)
    if rng is not None:
        top = int((new_h - size + 1) * rng.random())
        left = int((new_w - size + 1) * rng.random())
    else:
        top = (new_h - size) // 2
        left = (new_w - size) // 2
    scale = resize_scale(height, width, size)
    return CropGeometry(scale, scale, new_w, new_h, left, top, size)


def resize_and_crop(image: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """Resize (cv2.INTER_AREA, as albumentations SmallestMaxSize in the release) and crop the square."""
    height, width = image.shape[:2]
    if (geometry.resized_height, geometry.resized_width) != (height, width):
        image = cv2.resize(image, (geometry.resized_width, geometry.resized_height), interpolation=cv2.INTER_AREA)
    s = geometry.size
    return image[geometry.top : geometry.top + s, geometry.left : geometry.left + s]


def clean_pose(
    people: list[np.ndarray],
    height: int,
    width: int,
    geometry: CropGeometry,
    max_person_num: int = 10,
    keypoint_num: int = 17,
    keypoint_thresh: float = 0.02,
    flip: bool = False,
) -> np.ndarray:
    """Keypoints of the first ``max_person_num`` people in output-crop pixels, (max_person_num, K, 3) float32.

    A keypoint survives when it is finite, inside the original image, has score > ``keypoint_thresh`` and lands
    inside the crop after scaling by the resize factor (one for both axes) and shifting by the crop corner
    (docs/release_behaviours.md §2.2-2.4; unlike the release, out-of-image keypoints are missing rather than
    (0, 0), Q14). Everything else, and every absent person, is ``(-1, -1, 0)``. With ``flip`` the crop is mirrored
    (x -> size - 1 - x, so pixel column c maps to size - 1 - c as the flipped image does) and left/right joints
    swap (``COCO_FLIP_INDEX``).
    """
    pose = np.tile(np.asarray(MISSING_KEYPOINT, np.float32), (max_person_num, keypoint_num, 1))
    for p, keypoints in enumerate(people[:max_person_num]):
        kp = np.asarray(keypoints, np.float64)
        x, y, score = kp[:, 0], kp[:, 1], kp[:, 2]
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(kp).all(axis=1) & (score > keypoint_thresh)
            keep &= (x >= 0) & (x < width) & (y >= 0) & (y < height)
            cx = x * geometry.scale_x - geometry.left
            cy = y * geometry.scale_y - geometry.top
            if flip:
                cx = geometry.size - 1 - cx
            keep &= (cx >= 0) & (cx < geometry.size) & (cy >= 0) & (cy < geometry.size)
        pose[p, keep, 0] = cx[keep]
        pose[p, keep, 1] = cy[keep]
        pose[p, keep, 2] = score[keep]
    if flip:
        if keypoint_num != len(COCO_FLIP_INDEX):
            raise ValueError(f"horizontal flip needs COCO-17 keypoints, got keypoint_num={keypoint_num}")
        pose = pose[:, list(COCO_FLIP_INDEX)]
    return pose


def flip_image(image: np.ndarray) -> np.ndarray:
    """Mirror an (H, W, C) image left-right (contiguous copy)."""
    return np.ascontiguousarray(image[:, ::-1])
