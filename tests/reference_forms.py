"""Slow, literal reference forms the tests compare the fast code against (not used by the library).

- ``munkres_package``: the munkres 1.1.4 package itself (grpose/pose/assignment.py ports it);
- ``post_dark_udp``: mmpose's whole-map DARK refinement (grpose/pose/refine.py ``post_dark_udp_local`` reads only
  the values it needs);
- ``refine_person_literal``: mmpose's ``refine`` with a full-map argmax for every joint (``refine_people``).
"""

from __future__ import annotations

import numpy as np
from munkres import Munkres

from grpose.pose.refine import DARK_LOG_CLIP, _dark_newton_step, gaussian_blur3


def munkres_package(cost_matrix: np.ndarray) -> list[tuple[int, int]]:
    """The reference solver itself: ``munkres.Munkres().compute`` (pure Python, munkres==1.1.4)."""
    return Munkres().compute(np.array(cost_matrix, dtype=np.float64))


def post_dark_udp(coords: np.ndarray, heatmaps: np.ndarray, kernel: int = 3) -> np.ndarray:
    """UDP's DARK refinement (docs/pose_pipeline.md §2.5 'Adjust'): Newton step on the log of the blurred heatmaps.

    coords (N, K, 2) float32 heatmap coordinates (every joint, detected or not), heatmaps (K, H, W) float32.
    ``heatmaps`` is not modified: this is mmpose's CUDA behaviour (docs/pose_pipeline.md §2.8).
    """
    if kernel != 3:
        raise ValueError("only the 3x3 blur of the GRPose configs is implemented")
    coords = np.array(coords, dtype=np.float32)
    k, h, w = heatmaps.shape
    n = coords.shape[0]
    hm = gaussian_blur3(heatmaps)
    np.clip(hm, *DARK_LOG_CLIP, out=hm)
    np.log(hm, out=hm)
    pad = np.pad(hm[None], ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge").flatten()
    index = coords[..., 0] + 1 + (coords[..., 1] + 1) * (w + 2)
    index += (w + 2) * (h + 2) * np.arange(0, k).reshape(-1, k)
    index = index.astype(int).reshape(-1, 1)
    i_ = pad[index]
    ix1 = pad[index + 1]
    iy1 = pad[index + w + 2]
    ix1y1 = pad[index + w + 3]
    ix1_y1_ = pad[index - w - 3]
    ix1_ = pad[index - 1]
    iy1_ = pad[index - 2 - w]
    return _dark_newton_step(coords, (i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_), n, k)


def refine_person_literal(heatmaps: np.ndarray, tags: np.ndarray, keypoints: np.ndarray, use_udp: bool) -> np.ndarray:
    """Slow, literal form of mmpose's ``refine`` (full-map argmax for every joint); kept to test the fast one."""
    num_joints, h, w = heatmaps.shape
    if tags.ndim == 3:
        tags = tags[..., None]
    found = []
    for i in range(num_joints):
        if keypoints[i, 2] > 0:
            x, y = keypoints[i][:2].astype(int)
            found.append(tags[i, np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)])
    prev_tag = np.mean(found, axis=0)
    results = []
    for hm, tag in zip(heatmaps, tags):
        dist = ((tag - prev_tag[None, None, :]) ** 2).sum(axis=2) ** 0.5
        yy, xx = np.unravel_index(np.argmax(hm - np.round(dist)), hm.shape)
        val = hm[yy, xx]
        x, y = (xx, yy) if use_udp else (xx + 0.5, yy + 0.5)
        x += 0.25 if hm[yy, min(w - 1, xx + 1)] > hm[yy, max(0, xx - 1)] else -0.25
        y += 0.25 if hm[min(h - 1, yy + 1), xx] > hm[max(0, yy - 1), xx] else -0.25
        results.append((x, y, val))
    results = np.array(results)
    for i in range(num_joints):
        if results[i, 2] > 0 and keypoints[i, 2] == 0:
            keypoints[i, :3] = results[i, :3]
    return keypoints
