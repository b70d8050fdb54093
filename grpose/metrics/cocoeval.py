"""Keypoint COCOeval with xtcocotools' "unmatched" sentinel (-1), on top of pycocotools.

The release scored AP/AR with xtcocotools (>= 1.10), whose ``evaluateImg`` marks an unmatched detection or GT with
-1 and whose ``accumulate`` counts a detection as a true positive when its match is ``>= 0``. pycocotools uses 0
for "unmatched" and tests truthiness, so a GT annotation with id 0 can never produce a true positive there: its
match is counted as a false positive and the GT stays matched. Everything else (OKS, thresholds, area ranges,
greedy matching order, crowd handling, precision/recall accumulation) is the same in both, so this class only
replaces the per-image matching and feeds pycocotools' ``accumulate`` a matched/unmatched mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

UNMATCHED = -1


class XtCOCOeval(COCOeval):
    """pycocotools ``COCOeval`` whose matching uses -1 as the "unmatched" sentinel (xtcocotools >= 1.10).

    ``evalImgs[...]['dtMatches']`` / ``['gtMatches']`` hold the matched GT / detection id, or -1. With annotation
    ids >= 1 the results are identical to pycocotools'; with a GT id 0 they are what xtcocotools reports.
    """

    def evaluateImg(self, imgId: int, catId: int, aRng: list, maxDet: int) -> dict[str, Any] | None:  # noqa: N802,N803
        p = self.params
        if p.useCats:
            gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gts = [g for c in p.catIds for g in self._gts[imgId, c]]
            dts = [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gts and not dts:
            return None
        for g in gts:
            g["_ignore"] = int(bool(g["ignore"]) or g["area"] < aRng[0] or g["area"] > aRng[1])
        # GT: not-ignored first (stable); detections: highest score first (stable), at most maxDet
        gt_order = np.argsort([g["_ignore"] for g in gts], kind="mergesort")
        gts = [gts[i] for i in gt_order]
        dts = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")[:maxDet]]
        ious = self.ious[imgId, catId]
        ious = ious[:, gt_order] if len(ious) > 0 else ious

        n_thr, n_gt, n_dt = len(p.iouThrs), len(gts), len(dts)
        gt_ignore = np.array([g["_ignore"] for g in gts])
        crowd = [bool(g["iscrowd"]) for g in gts]
        gtm = np.full((n_thr, n_gt), UNMATCHED, dtype=np.float64)
        dtm = np.full((n_thr, n_dt), UNMATCHED, dtype=np.float64)
        dt_ignore = np.zeros((n_thr, n_dt), dtype=bool)
        if len(ious) > 0:
            for t, thr in enumerate(p.iouThrs):
                for di, d in enumerate(dts):
                    best, m = min(thr, 1 - 1e-10), UNMATCHED
                    for gi in range(n_gt):
                        if gtm[t, gi] != UNMATCHED and not crowd[gi]:
                            continue  # already taken (crowds can take several)
                        if m != UNMATCHED and gt_ignore[m] == 0 and gt_ignore[gi] == 1:
                            break  # matched a regular GT; the rest are ignored ones
                        # same comparison as COCOeval: a NaN similarity is not "< best", so it matches
                        if ious[di, gi] < best:
                            continue
                        best, m = ious[di, gi], gi
                    if m == UNMATCHED:
                        continue
                    dt_ignore[t, di] = bool(gt_ignore[m])
                    dtm[t, di] = gts[m]["id"]
                    gtm[t, m] = d["id"]
        outside = np.array([d["area"] < aRng[0] or d["area"] > aRng[1] for d in dts], dtype=bool).reshape(1, n_dt)
        dt_ignore |= (dtm == UNMATCHED) & outside
        return {
            "image_id": imgId,
            "category_id": catId,
            "aRng": aRng,
            "maxDet": maxDet,
            "dtIds": [d["id"] for d in dts],
            "gtIds": [g["id"] for g in gts],
            "dtMatches": dtm,
            "gtMatches": gtm,
            "dtScores": [d["score"] for d in dts],
            "gtIgnore": gt_ignore,
            "dtIgnore": dt_ignore,
        }

    def accumulate(self, p: Any = None) -> None:
        # pycocotools' accumulate reads dtMatches only as "matched" (truthy): hand it that mask, then restore.
        saved = []
        for e in self.evalImgs:
            if e is not None:
                saved.append((e, e["dtMatches"]))
                e["dtMatches"] = e["dtMatches"] != UNMATCHED
        try:
            super().accumulate(p)
        finally:
            for e, dtm in saved:
                e["dtMatches"] = dtm
