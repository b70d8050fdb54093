"""Associative-embedding grouping of mmpose 0.x: top-k, tag matching, the whole parser, back-projection.

``parse`` is mmpose's ``HeatmapParser.parse`` for one image (docs/pose_pipeline.md §2.5): top-k peaks per joint,
greedy joint-by-joint tag matching (solver: grpose/pose/assignment.py), adjust and refine (grpose/pose/refine.py),
person scores. ``group_to_image`` maps heatmap coordinates back to the input image (§2.6); pose NMS lives in
grpose/pose/nms.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from grpose.pose.assignment import Solver, munkres_1_1_4
from grpose.pose.nms import people_to_results
from grpose.pose.refine import adjust_quarter, post_dark_udp_local, refine_people

log = logging.getLogger(__name__)

__all__ = ["GroupingParams", "group_to_image", "match_by_tag", "parse", "people_to_results", "person_scores", "top_k"]

# Order in which _match_by_tag visits the joints (docs/pose_pipeline.md §2.5).
JOINT_ORDER: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)
# Tag matching cost = round(tag distance) * TAG_DISTANCE_WEIGHT - detection value (mmpose's ``use_detection_val``):
# the rounded distance dominates and the detection value only breaks ties between equally distant people.
TAG_DISTANCE_WEIGHT = 100
# Cost of the padding columns that let the square solver leave a joint unmatched (it then starts a new person).
UNMATCHED_COST = 1e10
# mmpose's scale unit: ``scale`` (center, scale) is given in units of 200 pixels.
PIXEL_STD = 200.0


@dataclass
class GroupingParams:
    """test_cfg values of the associative-embedding parser (docs/pose_pipeline.md §2.1)."""

    num_joints: int = 17
    max_num_people: int = 30
    detection_threshold: float = 0.1
    tag_threshold: float = 1.0
    use_detection_val: bool = True
    ignore_too_much: bool = False
    nms_kernel: int = 5
    nms_padding: int = 2
    joint_order: tuple[int, ...] = JOINT_ORDER


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
            diff_normed = np.round(diff_normed) * TAG_DISTANCE_WEIGHT - joints[:, 2:3]
        num_added = diff.shape[0]
        num_grouped = diff.shape[1]
        if num_added > num_grouped:
            diff_normed = np.concatenate(
                (diff_normed, np.zeros((num_added, num_added - num_grouped), dtype=np.float32) + UNMATCHED_COST), axis=1
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


def person_scores(people: np.ndarray) -> np.ndarray:
    """Mean joint value over all joints (0 for missing ones), float32 (score_per_joint=False)."""
    return np.array([p[:, 2].mean() for p in people], dtype=np.float32)


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
    """``get_group_preds``: heatmap (x, y) -> input-image pixels (docs/pose_pipeline.md §2.6); heatmap_size (W, H)."""
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
    scale_px = np.asarray(scale) * PIXEL_STD
    sx = scale_px[0] / heatmap_size[0]
    sy = scale_px[1] / heatmap_size[1]
    out = people.copy()
    out[..., 0] = people[..., 0] * sx + center[0] - scale_px[0] * 0.5
    out[..., 1] = people[..., 1] * sy + center[1] - scale_px[1] * 0.5
    return out
