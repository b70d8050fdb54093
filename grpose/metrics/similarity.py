"""CAP ("SAP", similarity AP): weighted-cosine keypoint similarity and its COCOeval (docs/metrics.md §4; Q16)."""

from __future__ import annotations

import math

import numpy as np
from pycocotools.coco import COCO

from grpose.metrics.cocoeval import XtCOCOeval

#: COCO-17 per-keypoint OKS sigmas (docs/metrics.md §3).
COCO_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
)
COCO_SIGMAS = COCO_SIGMAS / 10.0
NUM_JOINTS = 17


def weighted_cosine_similarity(gt_kpts: np.ndarray, dt_kpts: np.ndarray, slip: bool, nan_policy: str) -> float:
    """CAP similarity of one (detection, GT person) pair (docs/metrics.md §4; Q16).

    Joints with GT visibility > 0 are kept; x and y are divided by the COCO sigmas, min-max normalised and
    L2-normalised per vector; the result is the cosine of [x_g; y_g] and [x_d; y_d].
    ``slip=True`` reproduces the released slip y_d := x_d / ||y_d|| (detected y only enters through its norm).
    ``nan_policy='released'``: a zero-range vector (one visible joint, or all x or all y equal) gives 0/0 = NaN as
    in the release (COCOeval then counts NaN as a match because ``NaN < thr`` is False).
    ``nan_policy='corrected'``: a zero-range vector normalises to the zero vector (it carries no shape), an all-zero
    vector stays zero under L2 normalisation, and the cosine is 0 when either concatenated vector is all zero.
    A GT person without visible joints scores 0 under both policies (the release would crash on it).
    """
    g, d = np.asarray(gt_kpts, dtype=np.float64), np.asarray(dt_kpts, dtype=np.float64)
    vis = g[:, 2] > 0
    if not vis.any():
        return 0.0
    sig = COCO_SIGMAS[vis]
    xg, yg, xd, yd = g[vis, 0] / sig, g[vis, 1] / sig, d[vis, 0] / sig, d[vis, 1] / sig
    released = nan_policy == "released"

    def minmax(v: np.ndarray) -> np.ndarray:
        rng = v.max() - v.min()
        if rng == 0 and not released:
            return np.zeros_like(v)
        return (v - v.min()) / rng

    def unit(v: np.ndarray) -> np.ndarray:
        norm = math.sqrt(float((v**2).sum()))
        if norm == 0 and not released:
            return v
        return v / norm

    with np.errstate(divide="ignore", invalid="ignore"):
        xg, yg, xd, yd = minmax(xg), minmax(yg), minmax(xd), minmax(yd)
        xg, yg, xd_u = unit(xg), unit(yg), unit(xd)
        if slip:
            yd_norm = math.sqrt(float((yd**2).sum()))
            yd = xd_u / yd_norm if (yd_norm != 0 or released) else np.zeros_like(xd_u)
        else:
            yd = unit(yd)
        gv, dv = np.concatenate([xg, yg]), np.concatenate([xd_u, yd])
        denom = float(np.linalg.norm(gv) * np.linalg.norm(dv))
        if denom == 0 and not released:
            return 0.0
        return float(np.dot(gv, dv) / denom)


class SimilarityCOCOeval(XtCOCOeval):
    """Keypoint COCOeval whose OKS matrix is replaced by the CAP similarity (docs/metrics.md §4; Q16).

    Matching (with the -1 "unmatched" sentinel of the release, so GT id 0 is matched normally), thresholds
    (.50:.05:.95), area ranges and accumulation are those of ``XtCOCOeval``.
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO, slip: bool, nan_policy: str) -> None:
        super().__init__(coco_gt, coco_dt, "keypoints")
        self.slip = slip
        self.nan_policy = nan_policy

    def computeOks(self, imgId: int, catId: int) -> np.ndarray | list:  # noqa: N802 (pycocotools name)
        p = self.params
        gts = self._gts[imgId, catId]
        dts = self._dts[imgId, catId]
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")
        dts = [dts[i] for i in order][: p.maxDets[-1]]
        if len(gts) == 0 or len(dts) == 0:
            return []
        sims = np.zeros((len(dts), len(gts)))
        for j, gt in enumerate(gts):
            g = np.asarray(gt["keypoints"], dtype=np.float64).reshape(NUM_JOINTS, 3)
            for i, dt in enumerate(dts):
                d = np.asarray(dt["keypoints"], dtype=np.float64).reshape(NUM_JOINTS, 3)
                sims[i, j] = weighted_cosine_similarity(g, d, self.slip, self.nan_policy)
        return sims
