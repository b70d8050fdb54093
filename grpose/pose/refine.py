"""Adjust and refine of mmpose 0.x's associative-embedding parser, exact and fast (docs/pose_pipeline.md §2.5).

Adjust moves every grouped joint off the integer heatmap grid: UDP models take a DARK Newton step on the log of the
blurred heatmap, other models a quarter pixel towards the higher neighbour. Refine fills each person's undetected
joints with the heatmap peak whose tag is closest to the person's mean tag. Both equal mmpose's forms bit for bit
(tests/reference_forms.py holds the slow literal forms the tests compare against); the fast forms only evaluate
what mmpose's would read.
"""

from __future__ import annotations

import numpy as np

# DARK works on log(clip(blurred heatmap, 0.001, 50)) (mmpose's ``post_dark_udp``): the lower bound keeps the log
# finite on an empty map, the upper one is far above any heatmap value.
DARK_LOG_CLIP = (0.001, 50.0)

# Refine scores a pixel as heatmap - round(||tag - person's mean tag||) and takes the best pixel per joint. The
# exact search below (``_best_pixels``) is organised for speed; the three numbers only decide how much work each
# pass does, never the answer:
#: first pass: every person is scored on at most this many of the map's brightest pixels at once (a (people, 4096)
#: score matrix, a few MB), which settles almost everyone;
FIRST_PASS_PIXELS = 4096
#: ... and only on pixels at least this fraction of the map's peak (dimmer pixels rarely win; if one could, the
#: exactness check sends that person to the second pass);
FIRST_PASS_MIN_FRACTION_OF_PEAK = 0.05
#: second pass, per unsettled person: above this many candidate pixels, pre-select by tag bins instead of scoring all.
BINNED_SEARCH_ABOVE = 2048
#: a pixel beats a score reached elsewhere only if round(distance) == 0, i.e. distance <= 0.5 (numpy rounds half to
#: even), so its first tag component lies within 0.5 of the person's; 0.001 more absorbs float32 rounding.
ZERO_ROUNDING_TAG_RADIUS = 0.501
#: tag bins are keyed by floor(2 * tag) in int16; keys (and the query bounds, clipped the same way) stay inside
#: int16's +-32767, so tags beyond +-15000 share the end bins: windows stay supersets, never miss a pixel.
TAG_BIN_KEY_LIMIT = 30000


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


def post_dark_udp_local(coords: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """UDP's DARK refinement (docs/pose_pipeline.md §2.5 'Adjust'): one Newton step on the log of the blurred maps.

    coords (N, K, 2) float32 heatmap coordinates (every joint, detected or not), heatmaps (K, H, W) float32, not
    modified (mmpose's CUDA behaviour, docs/pose_pipeline.md §2.8). mmpose's ``post_dark_udp`` blurs, clips and
    logs whole maps, then reads 7 taps per joint from the edge-padded result; this evaluates only those taps (the
    same flat indices, the same float32 operations per value), so the result is bit-identical
    (tests/reference_forms.py ``post_dark_udp`` is the whole-map form).
    """
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
    np.clip(vals, *DARK_LOG_CLIP, out=vals)
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


def _best_pixels(hm: np.ndarray, tag: np.ndarray, prev_tags: np.ndarray, top: int = FIRST_PASS_PIXELS) -> np.ndarray:
    """For each row of prev_tags (m, L): the first flat index of max(hm - round(||tag - prev||)), exactly.

    hm (N,), tag (N, L). A pixel scores at most its heatmap value (round(dist) >= 0, float subtraction is
    monotone). So the brightest pixels are scored first; a person whose best score there beats every unscored
    heatmap value is done, the others are scored on every pixel bright enough to reach their best. Equal to
    ``np.argmax`` over the full map, including its first-index tie-breaking.
    """
    peak = hm.max()
    idx = np.flatnonzero(hm >= np.float32(FIRST_PASS_MIN_FRACTION_OF_PEAK) * peak) if peak > 0 else np.arange(0)
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
        if cand.size > BINNED_SEARCH_ABOVE:
            # a pixel scoring >= thr has round(dist) = 0 (so |tag_0 - prev_0| <= 0.5) or, as round(dist) >= 1
            # otherwise, a heatmap >= thr + 1 (taken with a 0.5 margin below): find the first kind through pixels
            # binned by their first tag component
            bins = bins or _TagBins(tag[:, 0])
            near = bins.within(prev_tags[j, 0], ZERO_ROUNDING_TAG_RADIUS)
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
        keys = np.clip(np.floor(tag0 * 2), -TAG_BIN_KEY_LIMIT, TAG_BIN_KEY_LIMIT).astype(np.int16)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def within(self, center: float, radius: float) -> np.ndarray:
        lo = np.clip(np.floor((center - radius) * 2) - 1, -TAG_BIN_KEY_LIMIT, TAG_BIN_KEY_LIMIT)
        hi = np.clip(np.floor((center + radius) * 2) + 1, -TAG_BIN_KEY_LIMIT, TAG_BIN_KEY_LIMIT)
        a = np.searchsorted(self.sorted, lo, side="left")
        b = np.searchsorted(self.sorted, hi, side="right")
        return self.order[a:b]


def refine_people(
    heatmaps: np.ndarray, tags: np.ndarray, people: np.ndarray, use_udp: bool, top: int = FIRST_PASS_PIXELS
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
