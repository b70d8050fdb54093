"""Pose-alignment metrics: keypoint AP/AR, CAP (similarity AP) and PCE (docs/metrics.md; quirks Q16, Q19-Q21).

Slightly over 400 lines: both protocols' GT/detection conversion sits next to the metrics they feed, so the
differences between the protocols (docs/metrics.md §1-§6) can be read in one file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from grpose.metrics.cocoeval import XtCOCOeval
from grpose.metrics.similarity import COCO_SIGMAS, NUM_JOINTS, SimilarityCOCOeval, weighted_cosine_similarity

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_SIGMAS",
    "NUM_JOINTS",
    "PROTOCOLS",
    "STAT_KEYS",
    "SimilarityCOCOeval",
    "count_gt_people",
    "dt_annotations",
    "evaluate_cap",
    "evaluate_keypoint_ap",
    "evaluate_pose_alignment",
    "gt_annotations",
    "gt_person_mask",
    "pce",
    "per_scene",
    "weighted_cosine_similarity",
]

PROTOCOLS = ("corrected", "released")
#: Names of COCOeval ``stats[0..9]`` for keypoints (AP, AP50, AP75, AP medium, AP large, then the same for AR).
STAT_KEYS = ("ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "ar50", "ar75", "ar_m", "ar_l")
_CATEGORY = {"id": 1, "name": "person"}

PoseInput = np.ndarray | Sequence[np.ndarray]
Detection = Mapping[str, Any]
Size = int | Sequence[int]


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _people(poses: PoseInput) -> list[np.ndarray]:
    """Split poses (N,P,17,3) or a list of (P_i,17,3) into one float64 (P_i,17,3) array per image."""
    out = []
    for p in poses:
        a = np.asarray(p, dtype=np.float64)
        if a.size == 0:
            a = a.reshape(0, NUM_JOINTS, 3)
        if a.ndim != 3 or a.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(f"expected per-image poses of shape (P, 17, 3), got {a.shape}")
        out.append(a)
    return out


def _per_image(value: Size, n: int, name: str) -> list[int]:
    if isinstance(value, (int, np.integer)):
        return [int(value)] * n
    vals = [int(v) for v in value]
    if len(vals) != n:
        raise ValueError(f"{name} has {len(vals)} entries for {n} images")
    return vals


def gt_person_mask(person_poses: np.ndarray) -> np.ndarray:
    """Which person slots are GT people: at least one joint with x > 0 (docs/metrics.md §1; both protocols)."""
    return (np.asarray(person_poses)[..., 0] > 0).any(axis=-1)


def count_gt_people(gt_poses: PoseInput) -> np.ndarray:
    """Number of GT people per image (slots with a joint at x > 0)."""
    return np.array([int(gt_person_mask(p).sum()) for p in _people(gt_poses)], dtype=np.int64)


def gt_annotations(
    poses: PoseInput,
    image_ids: Sequence[int] | None,
    height: Size,
    width: Size,
    protocol: str = "corrected",
) -> dict[str, Any]:
    """Build a COCO keypoint ground-truth dict from input poses (docs/metrics.md §1; Q19).

    A person slot is a GT person when one of its joints has x > 0 (missing joints are (-1, -1, 0)).
    ``protocol='released'`` reproduces the release: keypoints stored as (x, y, score) so that COCOeval's
    ``v > 0`` test means score > 0, ``num_keypoints`` = number of joints with x > 0, bbox/area from min/max over
    all 17 rows (the (-1, -1) placeholders included, which enlarges the area), annotation id =
    ``P * position + slot`` (P = number of slots), so the first person of the first image gets id 0; the release
    scored with xtcocotools, whose -1 "unmatched" sentinel matches id 0 normally (``XtCOCOeval`` does the same).
    ``protocol='corrected'``: visible = score > 0 (stored as v = 2, else v = 0), ``num_keypoints`` = number of
    visible joints (0 -> COCOeval ignores the person), bbox/area from the visible joints only (from the x > 0
    joints when none is visible), ids from 1.
    """
    _check_protocol(protocol)
    people = _people(poses)
    n = len(people)
    ids = list(range(n)) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} image ids for {n} images")
    heights, widths = _per_image(height, n, "height"), _per_image(width, n, "width")
    slots = max([p.shape[0] for p in people] + [1])
    images, anns = [], []
    next_id = 1
    for pos, (img_id, person_poses) in enumerate(zip(ids, people)):
        images.append({"id": img_id, "height": heights[pos], "width": widths[pos], "file_name": str(img_id)})
        for slot, kp in enumerate(person_poses):
            if not gt_person_mask(kp):
                continue
            x, y, s = kp[:, 0], kp[:, 1], kp[:, 2]
            if protocol == "released":
                flat = kp.reshape(-1)
                num = int((x > 0).sum())
                bx, by = x, y
                ann_id = slots * pos + slot
            else:
                vis = s > 0
                flat = np.stack([x, y, np.where(vis, 2.0, 0.0)], axis=1).reshape(-1)
                num = int(vis.sum())
                bx, by = (x[vis], y[vis]) if num else (x[x > 0], y[x > 0])
                ann_id = next_id
                next_id += 1
            x0, x1, y0, y1 = float(bx.min()), float(bx.max()), float(by.min()), float(by.max())
            anns.append(
                {
                    "id": int(ann_id),
                    "image_id": img_id,
                    "category_id": 1,
                    "keypoints": [float(v) for v in flat],
                    "num_keypoints": num,
                    "iscrowd": 0,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                }
            )
    return {"images": images, "annotations": anns, "categories": [dict(_CATEGORY)]}


def dt_annotations(detections: Sequence[Detection], image_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO keypoint results from per-image detections ``{'keypoints': (P,17,3), 'scores': (P,)}``.

    As pycocotools' ``loadRes`` does for keypoints: bbox/area from min/max over all 17 detected (x, y),
    ids from 1 in list order. Every detection is kept (no score threshold, docs/metrics.md §2).
    """
    ids = list(range(len(detections))) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != len(detections):
        raise ValueError(f"{len(ids)} image ids for {len(detections)} detection entries")
    out = []
    for img_id, det in zip(ids, detections):
        kps = np.asarray(det["keypoints"], dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        if len(scores) != len(kps):
            raise ValueError(f"image {img_id}: {len(kps)} detected poses but {len(scores)} scores")
        for kp, score in zip(kps, scores):
            x0, x1, y0, y1 = kp[:, 0].min(), kp[:, 0].max(), kp[:, 1].min(), kp[:, 1].max()
            out.append(
                {
                    "id": len(out) + 1,
                    "image_id": img_id,
                    "category_id": 1,
                    "keypoints": [float(v) for v in kp.reshape(-1)],
                    "score": float(score),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                }
            )
    return out


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_pair(gt: dict[str, Any], dts: list[dict[str, Any]]) -> tuple[COCO, COCO]:
    res = {"images": gt["images"], "categories": gt["categories"], "annotations": dts}
    return _coco(gt), _coco(res)


def _run_eval(evaluator: COCOeval) -> np.ndarray:
    evaluator.params.kpt_oks_sigmas = COCO_SIGMAS.copy()
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(invalid="ignore", divide="ignore"):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:10], dtype=np.float64)


def _canonical(n: int, image_ids: Sequence[Hashable] | None) -> list[int]:
    """Positions of the images sorted by their keys (given order when no keys): makes whole-set metrics
    independent of the input order (score ties across images are broken by this canonical order)."""
    if image_ids is None:
        return list(range(n))
    keys = list(image_ids)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} image ids for {n} images")
    if len(set(keys)) != n:
        raise ValueError("image_ids must be unique")
    return sorted(range(n), key=lambda i: keys[i])


def _prepare(
    gt_poses: PoseInput,
    detections: Sequence[Detection],
    height: Size,
    width: Size,
    image_ids: Sequence[Hashable] | None,
) -> tuple[list[np.ndarray], list[Detection], list[int], list[int]]:
    people = _people(gt_poses)
    n = len(people)
    if len(detections) != n:
        raise ValueError(f"{n} GT images but {len(detections)} detection entries")
    order = _canonical(n, image_ids)
    heights, widths = _per_image(height, n, "height"), _per_image(width, n, "width")
    return (
        [people[i] for i in order],
        [detections[i] for i in order],
        [heights[i] for i in order],
        [widths[i] for i in order],
    )


def _keypoint_stats(people, dets, heights, widths, protocol: str) -> np.ndarray:
    gt = gt_annotations(people, None, heights, widths, protocol)
    coco_gt, coco_dt = _coco_pair(gt, dt_annotations(dets))
    return _run_eval(XtCOCOeval(coco_gt, coco_dt, "keypoints"))


def _cap_stats(people, dets, heights, widths, protocol: str, slip: bool) -> np.ndarray:
    gt = gt_annotations(people, None, heights, widths, protocol)
    coco_gt, coco_dt = _coco_pair(gt, dt_annotations(dets))
    return _run_eval(SimilarityCOCOeval(coco_gt, coco_dt, slip=slip, nan_policy=protocol))


def evaluate_keypoint_ap(
    gt_poses: PoseInput,
    detections: Sequence[Detection],
    height: Size,
    width: Size,
    protocol: str = "corrected",
    image_ids: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """COCO keypoint AP/AR over the whole set (docs/metrics.md §3): keys ``STAT_KEYS`` = stats[0..9].

    ``XtCOCOeval`` (pycocotools with xtcocotools' -1 "unmatched" sentinel), iouType 'keypoints', COCO-17 sigmas,
    OKS .50:.05:.95, maxDets [20], area ranges all/medium/large. -1 means "no GT person in that area range".
    ``protocol`` selects the GT construction (see ``gt_annotations``). ``image_ids`` (unique sortable keys) fix a
    canonical image order.
    """
    _check_protocol(protocol)
    people, dets, hs, ws = _prepare(gt_poses, detections, height, width, image_ids)
    return dict(zip(STAT_KEYS, map(float, _keypoint_stats(people, dets, hs, ws, protocol))))


def evaluate_cap(
    gt_poses: PoseInput,
    detections: Sequence[Detection],
    height: Size,
    width: Size,
    protocol: str = "corrected",
    slip: bool = True,
    image_ids: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Similarity AP/AR (CAP) over the whole set: keys ``STAT_KEYS`` (docs/metrics.md §4; Q16).

    ``slip=True`` is the paper-compatible formula (detected y replaced by x_d/||y_d||), ``slip=False`` the
    intended one. ``protocol`` sets the GT box/area (area ranges) and the zero-range/NaN handling.
    """
    _check_protocol(protocol)
    people, dets, hs, ws = _prepare(gt_poses, detections, height, width, image_ids)
    return dict(zip(STAT_KEYS, map(float, _cap_stats(people, dets, hs, ws, protocol, slip))))


def _q20_batch(gt_counts: np.ndarray, det_counts: np.ndarray) -> float:
    """Released HND of one batch (Q20): the loop runs over ``range(#images with GT)`` and uses those numbers as
    image positions in the batch; an empty loop gives ``np.mean([])`` = NaN."""
    n_with_gt = int((gt_counts > 0).sum())
    if n_with_gt == 0:
        return float("nan")
    return float(np.mean(np.abs(gt_counts[:n_with_gt] - det_counts[:n_with_gt])))


def pce(
    gt_counts: Sequence[int] | np.ndarray,
    det_counts: Sequence[int] | np.ndarray,
    protocol: str = "corrected",
    batch_size: int = 4,
) -> float:
    """People-count error (docs/metrics.md §5; Q20).

    corrected: mean over all images of |#GT - #detections|.
    released: per batch of ``batch_size`` images (in the given order) the Q20 value, then the mean over batches,
    NaN batches (no GT at all) skipped as a CSV-row mean with pandas would; NaN if every batch is NaN.
    """
    _check_protocol(protocol)
    g = np.asarray(gt_counts, dtype=np.int64).reshape(-1)
    d = np.asarray(det_counts, dtype=np.int64).reshape(-1)
    if g.shape != d.shape:
        raise ValueError(f"gt_counts {g.shape} and det_counts {d.shape} differ")
    if len(g) == 0:
        return float("nan")
    if protocol == "corrected":
        return float(np.abs(g - d).mean())
    rows = [_q20_batch(g[i : i + batch_size], d[i : i + batch_size]) for i in range(0, len(g), batch_size)]
    return _row_mean(rows, protocol)


def _row_mean(values: Sequence[float], protocol: str) -> float:
    """Mean of per-batch rows (Q21). released: -1 rows are averaged in, NaN rows skipped (pandas-style mean of
    the CSV). corrected: -1 ("no GT in range") and NaN rows are skipped. Returns -1 (corrected) / NaN when
    no row is left (-1 when the skipped rows were -1)."""
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v) if protocol == "released" else ~np.isnan(v) & (v != -1)
    if keep.any():
        return float(v[keep].mean())
    return -1.0 if (v == -1).any() else float("nan")


def evaluate_pose_alignment(
    gt_poses: PoseInput,
    detections: Sequence[Detection],
    height: Size,
    width: Size,
    protocol: str = "corrected",
    batch_size: int = 4,
    image_ids: Sequence[Hashable] | None = None,
) -> dict[str, Any]:
    """All pose-alignment metrics (docs/metrics.md; Q16, Q19-Q21).

    Whole set (sorted by ``image_ids`` when given): ``ap``..``ar_l`` (COCO keypoint stats[0..9]), ``cap`` (paper
    formula with the Q16 slip), ``cap_corrected`` (intended formula), ``car``/``car_corrected`` (stats[5]),
    ``pce`` (see ``pce``). Released-style per-batch numbers (batches of ``batch_size`` images in the GIVEN order,
    last partial batch included; each batch evaluated on its own, so ids restart per batch under 'released'):
    ``<key>_batch_mean`` for every AP/AR key, ``cap_batch_mean``, ``cap_corrected_batch_mean``,
    ``pce_batch_mean``, averaged with ``_row_mean`` (Q21). ``ap`` stays the whole-set AP under both protocols;
    the caller decides which number to print as paper-comparable. Also ``protocol``, ``num_images``,
    ``num_gt``, ``num_det``, ``num_batches``.
    """
    _check_protocol(protocol)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    people_in, dets_in = _people(gt_poses), list(detections)
    n = len(people_in)
    people, dets, hs, ws = _prepare(people_in, dets_in, height, width, image_ids)
    gt_counts = count_gt_people(people_in)
    det_counts = np.array([len(np.asarray(d["scores"]).reshape(-1)) for d in dets_in], dtype=np.int64)

    out: dict[str, Any] = {"protocol": protocol, "num_images": n}
    out["num_gt"] = int(gt_counts.sum())
    out["num_det"] = int(det_counts.sum())
    out.update(zip(STAT_KEYS, map(float, _keypoint_stats(people, dets, hs, ws, protocol))))
    cap = _cap_stats(people, dets, hs, ws, protocol, slip=True)
    cap_c = _cap_stats(people, dets, hs, ws, protocol, slip=False)
    out.update(cap=float(cap[0]), car=float(cap[5]), cap_corrected=float(cap_c[0]), car_corrected=float(cap_c[5]))
    out["pce"] = pce(gt_counts, det_counts, protocol, batch_size)

    hs_in, ws_in = _per_image(height, n, "height"), _per_image(width, n, "width")
    rows: dict[str, list[float]] = {k: [] for k in (*STAT_KEYS, "cap", "cap_corrected", "pce")}
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        args = (people_in[sl], dets_in[sl], hs_in[sl], ws_in[sl], protocol)
        for k, v in zip(STAT_KEYS, _keypoint_stats(*args)):
            rows[k].append(float(v))
        rows["cap"].append(float(_cap_stats(*args, slip=True)[0]))
        rows["cap_corrected"].append(float(_cap_stats(*args, slip=False)[0]))
        rows["pce"].append(pce(gt_counts[sl], det_counts[sl], protocol, batch_size))
    for k, v in rows.items():
        out[f"{k}_batch_mean"] = _row_mean(v, protocol)
    out["num_batches"] = len(rows["pce"])
    return out


def per_scene(
    scenes: Sequence[str],
    gt_poses: PoseInput,
    detections: Sequence[Detection],
    height: Size,
    width: Size,
    protocol: str = "corrected",
    batch_size: int = 4,
    image_ids: Sequence[Hashable] | None = None,
) -> dict[str, dict[str, Any]]:
    """``evaluate_pose_alignment`` for each scene label separately (images keep their relative order within a
    scene; per-batch numbers batch within the scene). Keys sorted by scene name."""
    people, n = _people(gt_poses), len(scenes)
    if len(people) != n or len(detections) != n:
        raise ValueError(f"{n} scene labels for {len(people)} GT images and {len(detections)} detection entries")
    hs, ws = _per_image(height, n, "height"), _per_image(width, n, "width")
    result = {}
    for scene in sorted(set(scenes)):
        idx = [i for i, s in enumerate(scenes) if s == scene]
        ids = None if image_ids is None else [list(image_ids)[i] for i in idx]
        result[scene] = evaluate_pose_alignment(
            [people[i] for i in idx],
            [detections[i] for i in idx],
            [hs[i] for i in idx],
            [ws[i] for i in idx],
            protocol=protocol,
            batch_size=batch_size,
            image_ids=ids,
        )
        logger.debug("scene %s: %d images", scene, len(idx))
    return result
