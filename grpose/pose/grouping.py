"""Associative-embedding grouping of mmpose 0.x (top-k, tag matching, adjust, refine, scores, pose NMS) in NumPy."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# COCO-17 facts from mmpose's dataset_info (reference §2.1).
COCO_FLIP_INDEX: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
COCO_SIGMAS = np.array(
    [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087]
    + [0.089, 0.089]
)
# Order in which _match_by_tag visits the joints (reference §2.5).
JOINT_ORDER: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)

Solver = Callable[[np.ndarray], Sequence[tuple[int, int]]]


@dataclass
class GroupingParams:
    """test_cfg values of the associative-embedding parser (reference §2.1)."""

    num_joints: int = 17
    max_num_people: int = 30
    detection_threshold: float = 0.1
    tag_threshold: float = 1.0
    use_detection_val: bool = True
    ignore_too_much: bool = False
    nms_kernel: int = 5
    nms_padding: int = 2
    joint_order: tuple[int, ...] = JOINT_ORDER


# ---------------------------------------------------------------------------------------------------------------
# Hungarian solver: an exact NumPy port of munkres 1.1.4's algorithm (reference §2.5), same tie-breaking.
# ---------------------------------------------------------------------------------------------------------------


def munkres_1_1_4(cost_matrix: np.ndarray) -> list[tuple[int, int]]:
    """Solve the assignment problem exactly as ``munkres.Munkres().compute`` of munkres 1.1.4 does.

    Same steps, same float64 arithmetic order and the same scans: wide matrices are padded with zero rows,
    step 2 stars the first free zero of each row, step 4's zero search starts at the last found position and
    within the first row holding an uncovered zero takes the *last* one in cyclic column order (1.1.4's loop does
    not stop at the first hit), step 6 adds to covered rows and then subtracts from uncovered columns. Only starred
    cells inside the original shape are reported, in row-major order.
    """
    cost = np.asarray(cost_matrix, dtype=np.float64)
    rows, cols = cost.shape
    n = max(rows, cols)
    c = np.zeros((n, n), dtype=np.float64)
    c[:rows, :cols] = cost
    c -= c.min(axis=1, keepdims=True)  # step 1
    marked = np.zeros((n, n), dtype=np.int8)  # 1 = starred, 2 = primed
    row_cov = np.zeros(n, dtype=bool)
    col_cov = np.zeros(n, dtype=bool)
    zero = c == 0
    for i in range(n):  # step 2
        js = np.flatnonzero(zero[i] & ~col_cov)
        if js.size:
            marked[i, js[0]] = 1
            col_cov[js[0]] = True
    col_cov[:] = False
    arange = np.arange(n)
    while True:
        col_cov[:] = (marked == 1).any(axis=0)  # step 3 (covers were cleared before)
        if int(col_cov.sum()) >= n:
            break
        # step 4 (with step 6 looping back into it)
        row = col = 0
        while True:
            free = zero & ~row_cov[:, None] & ~col_cov[None, :]
            rows_any = free.any(axis=1)
            if not rows_any.any():
                # step 6: smallest uncovered value, added to covered rows then subtracted from uncovered columns
                minval = c[np.ix_(~row_cov, ~col_cov)].min()
                c[row_cov] += minval
                c[:, ~col_cov] -= minval
                zero = c == 0
                row = col = 0
                continue
            order = np.roll(arange, -row)
            i = int(order[np.argmax(rows_any[order])])
            js = np.flatnonzero(free[i])
            j = int(js[np.argmax((js - col) % n)])
            marked[i, j] = 2
            stars = np.flatnonzero(marked[i] == 1)
            if stars.size:
                row, col = i, int(stars[0])
                row_cov[row] = True
                col_cov[col] = False
                continue
            # step 5: alternating path from the uncovered primed zero
            path = [(i, j)]
            while True:
                star_rows = np.flatnonzero(marked[:, path[-1][1]] == 1)
                if not star_rows.size:
                    break
                r = int(star_rows[0])
                path.append((r, path[-1][1]))
                path.append((r, int(np.flatnonzero(marked[r] == 2)[0])))
            for r, k in path:
                marked[r, k] = 0 if marked[r, k] == 1 else 1
            row_cov[:] = False
            col_cov[:] = False
            marked[marked == 2] = 0
            break
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(marked[:rows, :cols] == 1))]


def munkres_package(cost_matrix: np.ndarray) -> list[tuple[int, int]]:
    """The reference solver itself: ``munkres.Munkres().compute`` (pure Python, munkres==1.1.4)."""
    from munkres import Munkres

    return Munkres().compute(np.array(cost_matrix, dtype=np.float64))


# ---------------------------------------------------------------------------------------------------------------
# Top-k and tag matching (reference §2.5)
# ---------------------------------------------------------------------------------------------------------------


def max_pool_same(maps: np.ndarray, kernel: int) -> np.ndarray:
    """``max_pool2d(maps, kernel, stride 1, padding (kernel-1)//2)`` with -inf padding, as two separable passes.

    Max is exact, so this equals torch's pooling bit for bit; it is several times faster on the CPU.
    """
    pad = (kernel - 1) // 2
    k, h, w = maps.shape
    p = np.empty((k, h, w + 2 * pad), dtype=maps.dtype)
    p[:, :, :pad] = -np.inf
    p[:, :, pad + w :] = -np.inf
    p[:, :, pad : pad + w] = maps
    rows = p[:, :, 0:w].copy()
    for d in range(1, kernel):
        np.maximum(rows, p[:, :, d : d + w], out=rows)
    p = np.empty((k, h + 2 * pad, w), dtype=maps.dtype)
    p[:, :pad] = -np.inf
    p[:, pad + h :] = -np.inf
    p[:, pad : pad + h] = rows
    out = p[:, 0:h].copy()
    for d in range(1, kernel):
        np.maximum(out, p[:, d : d + h], out=out)
    return out


def top_k(
    heatmaps: torch.Tensor, tags: torch.Tensor, params: GroupingParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep local maxima (5x5 max-pool NMS) and take the top ``max_num_people`` per joint.

    heatmaps (K,H,W) and tags (K,H,W,L) CPU float32 tensors. Returns tag_k (K,M,L) float32, loc_k (K,M,2) int64
    as (x, y), val_k (K,M) float32, M = max_num_people, sorted by value.
    """
    hm = heatmaps[None]
    if 2 * params.nms_padding == params.nms_kernel - 1:
        maxm = torch.from_numpy(max_pool_same(heatmaps.numpy(), params.nms_kernel))[None]
    else:
        maxm = F.max_pool2d(hm, params.nms_kernel, 1, params.nms_padding)
    hm = hm * torch.eq(maxm, hm).float()
    _, k, h, w = hm.shape
    val_k, ind = hm.view(1, k, -1).topk(params.max_num_people, dim=2)
    t = tags.reshape(1, k, h * w, -1)
    tag_k = torch.stack([torch.gather(t[..., i], 2, ind) for i in range(t.size(3))], dim=3)
    loc_k = torch.stack((ind % w, ind // w), dim=3)
    return tag_k[0].numpy(), loc_k[0].numpy(), val_k[0].numpy()


def match_by_tag(
    tag_k: np.ndarray, loc_k: np.ndarray, val_k: np.ndarray, params: GroupingParams, solver: Solver = munkres_1_1_4
) -> np.ndarray:
    """mmpose's ``_match_by_tag``: greedy joint-by-joint Hungarian matching on tag distance.

    A person is keyed by the float value of its first tag component (identical keys merge, as in mmpose) and
    people come out in dict insertion order. Returns (P, K, 3+L) float32: x, y, val, tags.
    """
    num_joints = params.num_joints
    default_ = np.zeros((num_joints, 3 + tag_k.shape[2]), dtype=np.float32)
    joint_dict: dict = {}
    tag_dict: dict = {}
    for i in range(num_joints):
        idx = params.joint_order[i]
        tags = tag_k[idx]
        joints = np.concatenate((loc_k[idx], val_k[idx, :, None], tags), 1)
        mask = joints[:, 2] > params.detection_threshold
        tags = tags[mask]
        joints = joints[mask]
        if joints.shape[0] == 0:
            continue
        if i == 0 or len(joint_dict) == 0:
            for tag, joint in zip(tags, joints):
                key = tag[0]
                joint_dict.setdefault(key, np.copy(default_))[idx] = joint
                tag_dict[key] = [tag]
            continue
        grouped_keys = list(joint_dict.keys())
        if params.ignore_too_much:
            grouped_keys = grouped_keys[: params.max_num_people]
        grouped_tags = [np.mean(tag_dict[k], axis=0) for k in grouped_keys]
        diff = joints[:, None, 3:] - np.array(grouped_tags)[None, :, :]
        diff_normed = np.linalg.norm(diff, ord=2, axis=2)
        diff_saved = np.copy(diff_normed)
        if params.use_detection_val:
            diff_normed = np.round(diff_normed) * 100 - joints[:, 2:3]
        num_added = diff.shape[0]
        num_grouped = diff.shape[1]
        if num_added > num_grouped:
            diff_normed = np.concatenate(
                (diff_normed, np.zeros((num_added, num_added - num_grouped), dtype=np.float32) + 1e10), axis=1
            )
        pairs = np.array(solver(diff_normed)).astype(int)
        for row, col in pairs:
            if row < num_added and col < num_grouped and diff_saved[row][col] < params.tag_threshold:
                key = grouped_keys[col]
                joint_dict[key][idx] = joints[row]
                tag_dict[key].append(tags[row])
            else:
                key = tags[row][0]
                joint_dict.setdefault(key, np.copy(default_))[idx] = joints[row]
                tag_dict[key] = [tags[row]]
    return np.array([joint_dict[k] for k in joint_dict]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Adjust, refine, scores (reference §2.5)
# ---------------------------------------------------------------------------------------------------------------


def gaussian_blur3(maps: np.ndarray) -> np.ndarray:
    """``cv2.GaussianBlur(m, (3, 3), 0)`` on each float32 map (kernel [.25, .5, .25], BORDER_REFLECT_101)."""
    maps = np.asarray(maps, dtype=np.float32)
    p = np.pad(maps, [(0, 0)] * (maps.ndim - 1) + [(1, 1)], mode="reflect")
    rows = np.float32(0.5) * p[..., 1:-1] + np.float32(0.25) * (p[..., :-2] + p[..., 2:])
    p = np.pad(rows, [(0, 0)] * (maps.ndim - 2) + [(1, 1), (0, 0)], mode="reflect")
    return np.float32(0.5) * p[..., 1:-1, :] + np.float32(0.25) * (p[..., :-2, :] + p[..., 2:, :])


def _dark_newton_step(coords: np.ndarray, taps: tuple[np.ndarray, ...], n: int, k: int) -> np.ndarray:
    """One Newton step of DARK/UDP: coords -= H^-1 · gradient, from the 7 log-map taps around each joint
    (centre, +x, +y, +x+y, -x-y, -x, -y; each (n*k, 1)), with mmpose's finite differences."""
    i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_ = taps
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    derivative = np.concatenate([dx, dy], axis=1).reshape(n, k, 2, 1)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    hessian = np.concatenate([dxx, dxy, dxy, dyy], axis=1).reshape(n, k, 2, 2)
    hessian = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
    coords -= np.einsum("ijmn,ijnk->ijmk", hessian, derivative).squeeze()
    return coords


def post_dark_udp(coords: np.ndarray, heatmaps: np.ndarray, kernel: int = 3) -> np.ndarray:
    """UDP's DARK refinement (reference §2.5 'Adjust'): Newton step on the log of the blurred heatmaps.

    coords (N, K, 2) float32 heatmap coordinates (every joint, detected or not), heatmaps (K, H, W) float32.
    ``heatmaps`` is not modified: this is mmpose's CUDA behaviour (reference §2.8).
    """
    if kernel != 3:
        raise ValueError("only the 3x3 blur of the GRPose configs is implemented")
    coords = np.array(coords, dtype=np.float32)
    k, h, w = heatmaps.shape
    n = coords.shape[0]
    hm = gaussian_blur3(heatmaps)
    np.clip(hm, 0.001, 50, out=hm)
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


def post_dark_udp_local(coords: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """``post_dark_udp`` evaluated only where it reads: the same flat indices into the edge-padded log map, the same
    float32 blur/clip/log per value, so the result is bit-identical without processing whole maps."""
    coords = np.array(coords, dtype=np.float32)
    k, h, w = heatmaps.shape
    n = coords.shape[0]
    index = coords[..., 0] + 1 + (coords[..., 1] + 1) * (w + 2)
    index += (w + 2) * (h + 2) * np.arange(0, k).reshape(-1, k)
    index = index.astype(int).reshape(-1, 1)
    offsets = np.array([0, 1, w + 2, w + 3, -w - 3, -1, -2 - w])
    flat = (index + offsets[None, :]) % ((w + 2) * (h + 2) * k)  # numpy's wrap-around for negative indices
    kk, rem = np.divmod(flat, (w + 2) * (h + 2))
    yp, xp = np.divmod(rem, w + 2)
    y = np.clip(yp - 1, 0, h - 1)  # 'edge' padding
    x = np.clip(xp - 1, 0, w - 1)

    def reflect(i: np.ndarray, size: int) -> np.ndarray:  # BORDER_REFLECT_101
        i = np.abs(i)
        return np.where(i > size - 1, 2 * (size - 1) - i, i)

    xl, xr = reflect(x - 1, w), reflect(x + 1, w)
    half, quarter = np.float32(0.5), np.float32(0.25)

    def row_blur(yy: np.ndarray) -> np.ndarray:
        return half * heatmaps[kk, yy, x] + quarter * (heatmaps[kk, yy, xl] + heatmaps[kk, yy, xr])

    vals = half * row_blur(y) + quarter * (row_blur(reflect(y - 1, h)) + row_blur(reflect(y + 1, h)))
    np.clip(vals, 0.001, 50, out=vals)
    np.log(vals, out=vals)
    i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_ = (vals[:, j : j + 1] for j in range(7))
    return _dark_newton_step(coords, (i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_), n, k)


def adjust_quarter(people: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """Non-UDP adjust: quarter-pixel step towards the higher neighbour, then +0.5 (joints with val > 0)."""
    people = np.array(people, dtype=np.float32)
    if people.shape[0] == 0:
        return people
    _, h, w = heatmaps.shape
    p_idx, k_idx = np.nonzero(people[:, :, 2] > 0)
    x = people[p_idx, k_idx, 0]
    y = people[p_idx, k_idx, 1]
    xx = x.astype(int)
    yy = y.astype(int)
    up = heatmaps[k_idx, np.minimum(h - 1, yy + 1), xx] > heatmaps[k_idx, np.maximum(0, yy - 1), xx]
    right = heatmaps[k_idx, yy, np.minimum(w - 1, xx + 1)] > heatmaps[k_idx, yy, np.maximum(0, xx - 1)]
    quarter = np.float32(0.25)
    y = np.where(up, y + quarter, y - quarter).astype(np.float32)
    x = np.where(right, x + quarter, x - quarter).astype(np.float32)
    people[p_idx, k_idx, 0] = x + np.float32(0.5)
    people[p_idx, k_idx, 1] = y + np.float32(0.5)
    return people


def _mean_tag(tags: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """A person's mean tag over its detected joints, read at their truncated (x, y) (mmpose's ``refine``)."""
    num_joints, h, w = tags.shape[:3]
    joints = np.flatnonzero(keypoints[:, 2] > 0)
    xy = keypoints[joints, :2].astype(int)  # truncation toward zero, then clipped to the map
    x = np.clip(xy[:, 0], 0, w - 1)
    y = np.clip(xy[:, 1], 0, h - 1)
    return np.mean(list(tags[joints, y, x]), axis=0)


def _best_pixels(hm: np.ndarray, tag: np.ndarray, prev_tags: np.ndarray, top: int = 4096) -> np.ndarray:
    """For each row of prev_tags (m, L): the first flat index of max(hm - round(||tag - prev||)), exactly.

    hm (N,), tag (N, L). A pixel scores at most its heatmap value (round(dist) >= 0, float subtraction is
    monotone). So the brightest pixels are scored first; a person whose best score there beats every unscored
    heatmap value is done, the others are scored on every pixel bright enough to reach their best. Equal to
    ``np.argmax`` over the full map, including its first-index tie-breaking.
    """
    peak = hm.max()
    idx = np.flatnonzero(hm >= np.float32(0.05) * peak) if peak > 0 else np.arange(0)
    if idx.size > top:
        idx = idx[np.argpartition(hm[idx], idx.size - top)[idx.size - top :]]
    idx = np.sort(idx)
    out = np.zeros(len(prev_tags), dtype=np.int64)
    todo = np.ones(len(prev_tags), dtype=bool)
    if idx.size:
        sc = _norm_scores_many(hm[idx], tag[idx], prev_tags)  # (m, n)
        best = sc.max(axis=1)
        out = idx[np.argmax(sc, axis=1)]  # idx ascending: the first maximum is the smallest flat index
        unscored_max = hm[idx].min() if idx.size < hm.size else -np.inf
        todo = ~(unscored_max < best)
    bins = None
    for j in np.flatnonzero(todo):
        thr = best[j] if idx.size else -np.inf
        cand = np.flatnonzero(hm >= thr)
        if cand.size > 2048:
            # a pixel scoring >= thr has round(dist) = 0 (so |tag_0 - prev_0| <= 0.5) or a heatmap >= thr + 1:
            # find the first kind through pixels binned by their first tag component (margins keep it exact)
            bins = bins or _TagBins(tag[:, 0])
            near = bins.within(prev_tags[j, 0], 0.501)
            if near.size:  # an achieved score raises the bar
                thr = max(thr, _norm_scores_many(hm[near], tag[near], prev_tags[j : j + 1]).max())
            mask = hm >= thr + np.float32(0.5)
            mask[near] = True
            cand = np.flatnonzero(mask & (hm >= thr))
        sc = _norm_scores_many(hm[cand], tag[cand], prev_tags[j : j + 1])[0]
        out[j] = cand[np.argmax(sc)]
    return out


class _TagBins:
    """Pixels sorted by floor(2 * tag), to list those whose tag lies within a window (a superset, never fewer)."""

    def __init__(self, tag0: np.ndarray) -> None:
        keys = np.clip(np.floor(tag0 * 2), -30000, 30000).astype(np.int16)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def within(self, center: float, radius: float) -> np.ndarray:
        lo = np.clip(np.floor((center - radius) * 2) - 1, -30000, 30000)
        hi = np.clip(np.floor((center + radius) * 2) + 1, -30000, 30000)
        a = np.searchsorted(self.sorted, lo, side="left")
        b = np.searchsorted(self.sorted, hi, side="right")
        return self.order[a:b]


def refine_people(
    heatmaps: np.ndarray, tags: np.ndarray, people: np.ndarray, use_udp: bool, top: int = 4096
) -> np.ndarray:
    """mmpose's ``refine`` on every person: fill undetected joints from the best peak near the person's mean tag.

    heatmaps (K,H,W), tags (K,H,W,L), people (P, K, 3+L) float32 (modified in place and returned). mmpose searches
    every joint but only writes joints with score 0, so only those are searched here (see ``_best_pixels``).
    """
    num_joints, h, w = heatmaps.shape
    if tags.ndim == 3:
        tags = tags[..., None]
    if people.shape[0] == 0:
        return people
    prev_tags = np.stack([_mean_tag(tags, person) for person in people])
    flat_hm = heatmaps.reshape(num_joints, h * w)
    flat_tags = tags.reshape(num_joints, h * w, -1)
    for i in range(num_joints):
        who = np.flatnonzero(people[:, i, 2] == 0)
        if who.size == 0:
            continue
        hm = heatmaps[i]
        for p, flat in zip(who, _best_pixels(flat_hm[i], flat_tags[i], prev_tags[who], top)):
            y, x = divmod(int(flat), w)
            val = hm[y, x]
            if not val > 0:
                continue
            fx = float(x) if use_udp else x + 0.5
            fy = float(y) if use_udp else y + 0.5
            fx += 0.25 if hm[y, min(w - 1, x + 1)] > hm[y, max(0, x - 1)] else -0.25
            fy += 0.25 if hm[min(h - 1, y + 1), x] > hm[max(0, y - 1), x] else -0.25
            people[p, i, 0] = fx
            people[p, i, 1] = fy
            people[p, i, 2] = val
    return people


def _norm_scores_many(hm: np.ndarray, tag: np.ndarray, prev_tags: np.ndarray) -> np.ndarray:
    """hm - round(||tag - prev||) for pixels hm (n,), tag (n, L) and people prev_tags (m, L) -> (m, n) float32.

    Same float32 operations as mmpose's per-map ``((tag - prev) ** 2).sum(-1) ** 0.5``, hence the same bits.
    """
    sq = (tag[None, :, :] - prev_tags[:, None, :]) ** 2
    acc = sq[..., 0]
    for l in range(1, sq.shape[-1]):  # numpy's sum over a short axis adds in this order
        acc = acc + sq[..., l]
    return hm[None, :] - np.round(acc**0.5)


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


def person_scores(people: np.ndarray) -> np.ndarray:
    """Mean joint value over all joints (0 for missing ones), float32 (score_per_joint=False)."""
    return np.array([p[:, 2].mean() for p in people], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# The whole parser, back-projection and pose NMS (reference §2.5-2.7)
# ---------------------------------------------------------------------------------------------------------------


def parse(
    heatmaps: torch.Tensor | np.ndarray,
    tags: torch.Tensor | np.ndarray,
    params: GroupingParams,
    adjust: bool = True,
    refine: bool = True,
    use_udp: bool = False,
    solver: Solver = munkres_1_1_4,
) -> tuple[np.ndarray, np.ndarray]:
    """``HeatmapParser.parse`` for one image: heatmaps (K,H,W), tags (K,H,W,L) -> people (P,K,3+L), scores (P,)."""
    hm_t = torch.as_tensor(heatmaps, dtype=torch.float32).cpu().contiguous()
    tag_t = torch.as_tensor(tags, dtype=torch.float32).cpu().contiguous()
    if tag_t.dim() == 3:
        tag_t = tag_t[..., None]
    people = match_by_tag(*top_k(hm_t, tag_t, params), params, solver=solver)
    if people.size == 0:
        people = np.zeros((0, hm_t.shape[0], 3 + tag_t.shape[-1]), dtype=np.float32)
    hm = hm_t.numpy()
    if adjust and people.shape[0] > 0:
        if use_udp:
            people[..., :2] = post_dark_udp_local(people[..., :2].copy(), hm)
        else:
            people = adjust_quarter(people, hm)
    scores = person_scores(people)
    if refine:
        people = refine_people(hm, tag_t.numpy(), people, use_udp)
    return people, scores


def group_to_image(
    people: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    heatmap_size: tuple[int, int],
    use_udp: bool,
) -> np.ndarray:
    """``get_group_preds``: heatmap (x, y) -> input-image pixels (reference §2.6). heatmap_size is (W, H)."""
    people = np.array(people, dtype=np.float32)
    if people.shape[0] == 0:
        return people
    if use_udp:
        size_t = np.array(heatmap_size, dtype=np.float32) - 1.0
        trans = np.zeros((2, 3), dtype=np.float32)
        trans[0, 0] = scale[0] / size_t[0]
        trans[1, 1] = scale[1] / size_t[1]
        xy = people[..., :2].reshape(-1, 2)
        xy1 = np.concatenate((xy, xy[:, 0:1] * 0 + 1), axis=1)
        people[..., :2] = np.dot(xy1, trans.T).reshape(people.shape[:-1] + (2,))
        return people
    scale_px = np.asarray(scale) * 200.0
    sx = scale_px[0] / heatmap_size[0]
    sy = scale_px[1] / heatmap_size[1]
    out = people.copy()
    out[..., 0] = people[..., 0] * sx + center[0] - scale_px[0] * 0.5
    out[..., 1] = people[..., 1] * sy + center[1] - scale_px[1] * 0.5
    return out


def oks_nms(
    keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float, sigmas: np.ndarray = COCO_SIGMAS
) -> np.ndarray:
    """mmpose's ``oks_nms`` (score_per_joint=False, no visibility threshold); returns kept indices, best first."""
    if len(scores) == 0:
        return np.zeros(0, dtype=int)
    kpts = np.array([k.flatten() for k in keypoints])
    scores = np.array(scores)
    areas = np.array(areas)
    variances = (sigmas * 2) ** 2
    order = scores.argsort()[::-1]
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        g = kpts[i]
        ious = np.zeros(len(rest), dtype=np.float32)
        for n, j in enumerate(rest):
            d = kpts[j]
            dx = d[0::3] - g[0::3]
            dy = d[1::3] - g[1::3]
            e = (dx**2 + dy**2) / variances / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            ious[n] = np.sum(np.exp(-e)) / len(e) if len(e) != 0 else 0.0
        order = order[np.where(ious <= threshold)[0] + 1]
    return np.array(keep, dtype=int)


def people_to_results(
    people: np.ndarray, scores: np.ndarray, pose_nms_threshold: float, sigmas: np.ndarray = COCO_SIGMAS
) -> dict[str, np.ndarray]:
    """Keypoints (x, y, score), areas over all joints, then pose NMS order (reference §2.7)."""
    num_joints = people.shape[1] if people.ndim == 3 else len(sigmas)
    if people.shape[0] == 0:
        return {
            "keypoints": np.zeros((0, num_joints, 3), dtype=np.float32),
            "scores": np.zeros(0, dtype=np.float32),
            "areas": np.zeros(0, dtype=np.float32),
        }
    kpts = people[:, :, :3].astype(np.float32)
    areas = np.array(
        [(np.max(p[:, 0]) - np.min(p[:, 0])) * (np.max(p[:, 1]) - np.min(p[:, 1])) for p in kpts], dtype=np.float32
    )
    scores = np.asarray(scores, dtype=np.float32)
    keep = oks_nms(kpts, scores, areas, pose_nms_threshold, sigmas)
    return {"keypoints": kpts[keep], "scores": scores[keep], "areas": areas[keep]}
