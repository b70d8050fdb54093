"""BottomUpPoseEstimator: mmpose 0.x ``inference_bottom_up_pose_model`` in torch + NumPy (docs/pose_pipeline.md §2)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grpose.checkpoint import CheckpointError, read_state_dict
from grpose.pose.assignment import Solver, munkres_1_1_4
from grpose.pose.grouping import GroupingParams, group_to_image, parse
from grpose.pose.higherhrnet import HRNET_VARIANTS, HigherHRNet, load_state_dict_strict
from grpose.pose.mobilenetv2 import MobileNetV2AE, rename_mmpose_key
from grpose.pose.nms import people_to_results
from grpose.pose.skeleton import COCO_FLIP_INDEX, COCO_SIGMAS

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchSpec:
    """Per-architecture test_cfg facts (docs/pose_pipeline.md §2.1)."""

    checkpoint: str
    what: str
    use_udp: bool
    project2image: bool
    align_corners: bool
    with_heatmaps: tuple[bool, ...]
    with_ae: tuple[bool, ...]


_HRNET = ArchSpec(
    "models/higherhrnet_w48_humanart_512x512_udp.pth",
    "HigherHRNet-W48 UDP bottom-up pose model trained on Human-Art (mmpose 0.x checkpoint), used for pose AP",
    use_udp=True,
    project2image=False,
    align_corners=True,
    with_heatmaps=(True, True),
    with_ae=(True, False),
)
ARCHS: dict[str, ArchSpec] = {
    "higherhrnet_w48": _HRNET,
    "higherhrnet_w18_small": ArchSpec(
        "", "small HigherHRNet for tests (no released weights)", True, False, True, (True, True), (True, False)
    ),
    "mobilenetv2": ArchSpec(
        "models/mobilenetv2_coco_512x512-4d96e309_20200816.pth",
        "MobileNetV2 associative-embedding pose model on COCO (mmpose 0.x checkpoint), used for the pose loss",
        use_udp=False,
        project2image=True,
        align_corners=False,
        with_heatmaps=(True,),
        with_ae=(True,),
    ),
    # The lab's estimator (docs/lab.md §3): the MobileNetV2 AE architecture at a width set by the config.
    "mobilenetv2_lab": ArchSpec(
        "models/lab/pose_estimator.safetensors",
        "lab pose estimator (MobileNetV2 AE; rebuild: python scripts/lab_pretrain.py --stage estimator)",
        use_udp=False,
        project2image=True,
        align_corners=False,
        with_heatmaps=(True,),
        with_ae=(True,),
    ),
}


@dataclass
class ImageMeta:
    """Resize facts of one image (docs/pose_pipeline.md §2.2): original size, network input size, center and scale."""

    height: int
    width: int
    base_size: tuple[int, int]  # (w_res, h_res)
    center: np.ndarray
    scale: np.ndarray


def _ceil64(x: float) -> int:
    return int(math.ceil(x / 64.0)) * 64


def image_meta(height: int, width: int, input_size: int = 512, use_udp: bool = False) -> ImageMeta:
    """``_get_multi_scale_size`` for scale 1 (docs/pose_pipeline.md §2.2)."""
    h, w = height, width
    if w < h:
        w_res = _ceil64(input_size)
        h_res = _ceil64(input_size / w * h)
        udp_scale = (w - 1.0, (h_res - 1) / (w_res - 1) * (w - 1))
        scale = udp_scale if use_udp else (w / 200.0, h_res / w_res * w / 200.0)
    else:
        h_res = _ceil64(input_size)
        w_res = _ceil64(input_size / h * w)
        udp_scale = ((w_res - 1) / (h_res - 1) * (h - 1), h - 1.0)
        scale = udp_scale if use_udp else (w_res / h_res * h / 200.0, h / 200.0)
    center = np.array([scale[0] / 2.0, scale[1] / 2.0]) if use_udp else np.array([round(w / 2.0), round(h / 2.0)])
    return ImageMeta(h, w, (w_res, h_res), center.astype(np.float64), np.array(scale, dtype=np.float64))


def resize_align(img: np.ndarray, meta: ImageMeta, use_udp: bool) -> np.ndarray:
    """``BottomUpResizeAlign``'s warp (uint8 HxWx3 -> h_res x w_res x 3), identity at 512 px; docs/pose_pipeline.md
    §2.2.

    Other sizes go through ``cv2.warpAffine``; bitwise equality with the reference needs OpenCV 4.10.
    """
    w_res, h_res = meta.base_size
    if (meta.width, meta.height) == (w_res, h_res):
        return img
    import cv2

    if use_udp:
        trans = np.zeros((2, 3), dtype=np.float32)
        trans[0, 0] = np.float32(w_res - 1.0) / np.float32(meta.scale[0])
        trans[1, 1] = np.float32(h_res - 1.0) / np.float32(meta.scale[1])
    else:
        # get_affine_transform(center, scale, 0, (w_res, h_res)): three point pairs, third point at 90 degrees.
        src_w = meta.scale[0] * 200.0
        src = np.zeros((3, 2), dtype=np.float32)
        dst = np.zeros((3, 2), dtype=np.float32)
        src[0] = meta.center
        src[1] = meta.center + np.array([0.0, src_w * -0.5])
        src[2] = src[1] + np.array([-(src[0] - src[1])[1], (src[0] - src[1])[0]])
        dst[0] = [w_res * 0.5, h_res * 0.5]
        dst[1] = np.array([w_res * 0.5, h_res * 0.5]) + np.array([0.0, w_res * -0.5])
        dst[2] = dst[1] + np.array([-(dst[0] - dst[1])[1], (dst[0] - dst[1])[0]])
        trans = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(img, trans, (int(w_res), int(h_res)), flags=cv2.INTER_LINEAR)


def _resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class BottomUpPoseEstimator:
    """Bottom-up associative-embedding pose estimator matching mmpose 0.x (HigherHRNet-W48 UDP or MobileNetV2 AE).

    ``__call__(images)`` takes a list of uint8 HxWx3 arrays, or a float tensor (B,3,H,W) whose range is
    ``value_range`` ((0, 1) or (-1, 1)); float images are truncated to uint8 levels (``quantize``) as the GRPose
    evaluation did. ``channel_order`` says what the arrays / tensor channels are: 'rgb' (correct use) or 'bgr'.
    mmpose treated arrays as BGR; the released GRPose evaluation passed RGB arrays, which is reproduced by
    calling with RGB data and ``channel_order='bgr'`` (docs/pose_pipeline.md §2.9). Returns per image a dict with
    'keypoints' (P,17,3) float32 x, y, score in input-image pixels, 'scores' (P,) and 'areas' (P,), in mmpose's
    order (pose NMS, best first). The network runs batched on ``device``; grouping runs on the CPU per image.
    """

    def __init__(
        self,
        arch: str = "higherhrnet_w48",
        checkpoint: str | None = None,
        flip_test: bool = True,
        adjust: bool = True,
        refine: bool = True,
        use_udp: bool | None = None,
        max_num_people: int = 30,
        detection_threshold: float = 0.1,
        tag_threshold: float = 1.0,
        pose_nms_threshold: float = 1.0,
        channel_order: str = "rgb",
        input_size: int = 512,
        device: str | torch.device = "cpu",
        allow_random_init: bool = False,
        value_range: tuple[float, float] = (0.0, 1.0),
        quantize: bool = True,
        solver: Solver = munkres_1_1_4,
        width_mult: float = 1.0,
        head_channels: int = 256,
        config_key: str | None = None,
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown pose arch {arch!r}; choose one of {sorted(ARCHS)}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError("channel_order must be 'rgb' or 'bgr'")
        self.arch = arch
        self.spec = ARCHS[arch]
        self.flip_test = flip_test
        self.adjust = adjust
        self.refine = refine
        self.use_udp = self.spec.use_udp if use_udp is None else use_udp
        self.pose_nms_threshold = pose_nms_threshold
        self.channel_order = channel_order
        self.input_size = input_size
        self.device = torch.device(device)
        self.value_range = tuple(value_range)
        self.quantize = quantize
        self.solver = solver
        self.params = GroupingParams(
            max_num_people=max_num_people, detection_threshold=detection_threshold, tag_threshold=tag_threshold
        )
        self.flip_index = list(COCO_FLIP_INDEX)
        self.sigmas = COCO_SIGMAS
        if checkpoint is None and not allow_random_init:
            raise CheckpointError(
                f"no checkpoint given for pose model {arch!r}: expected {self.spec.checkpoint or '(a file)'} "
                f"({self.spec.what}); see models/README.md. Pass allow_random_init=True only for tests."
            )
        if checkpoint is None:
            log.warning("pose model %s uses random weights (allow_random_init=True)", arch)
        # The initial weights come from a private RNG: the same random weights in every process and run, and
        # building an estimator mid-training (pose validation) leaves the global RNG, and so the training, as is.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = build_pose_model(arch, width_mult, head_channels)
        if checkpoint is not None:
            load_mmpose_checkpoint(self.model, checkpoint, arch, config_key=config_key)
        self.model.eval().requires_grad_(False).to(self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    # ----------------------------------------------------------------------------------------------- preprocessing
    def _to_uint8_arrays(self, images: torch.Tensor) -> list[np.ndarray]:
        levels = self._float_to_levels(images).to(torch.uint8)  # truncation, as numpy's astype(uint8)
        return [np.ascontiguousarray(u.permute(1, 2, 0).cpu().numpy()) for u in levels]

    def _float_to_levels(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        x = ((images.float() - lo) / (hi - lo)).clamp(0, 1)
        if self.quantize:
            return (x * 255).to(torch.uint8)
        return x * 255

    def preprocess(self, images: Sequence[np.ndarray] | torch.Tensor) -> tuple[torch.Tensor, list[ImageMeta]]:
        """Images -> normalised RGB network input (B,3,h_res,w_res) on the device, and per-image metas.

        All images of one call must share one network input size (same size, or sizes resizing alike).
        """
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"expected a float tensor (B,3,H,W), got shape {tuple(images.shape)}")
            b, _, h, w = images.shape
            meta = image_meta(h, w, self.input_size, self.use_udp)
            if meta.base_size == (w, h):
                levels = self._float_to_levels(images.to(self.device))
                x = levels.float() / 255.0
                metas = [meta] * b
                return self._normalise(x), metas
            images = self._to_uint8_arrays(images)
        arrays, metas = [], []
        for img in images:
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected uint8 HxWx3 arrays, got {img.dtype} {img.shape}")
            meta = image_meta(img.shape[0], img.shape[1], self.input_size, self.use_udp)
            arrays.append(resize_align(img, meta, self.use_udp))
            metas.append(meta)
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("images of one call must resize to the same network input size; call per image")
        batch = torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return self._normalise(batch), metas

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_order == "bgr":
            x = x.flip(1)
        return (x - self.mean) / self.std

    # --------------------------------------------------------------------------------------------------- network
    def _split(self, outputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        k = self.params.num_joints
        heatmaps, tags = [], []
        for i, out in enumerate(outputs):
            if self.spec.with_heatmaps[i]:
                heatmaps.append(out[:, :k])
            if self.spec.with_ae[i]:
                tags.append(out[:, k if self.spec.with_heatmaps[i] else 0 :])
        return heatmaps, tags

    def _flip_back(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.flip(m, [3])[:, self.flip_index] for m in maps]

    @torch.no_grad()
    def network(self, x: torch.Tensor, base_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Forward (and flipped forward) and aggregation (docs/pose_pipeline.md §2.3-2.4).

        Returns 'heatmaps' (B,K,h,w), 'tags' (B,K,h,w,L), 'backbone' and 'backbone_flip' (when flip_test).
        """
        with torch.autocast(device_type=x.device.type, enabled=False):  # mmpose ran in fp32
            return self._network(x.float(), base_size)

    def _network(self, x: torch.Tensor, base_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        ac = self.spec.align_corners
        feat = self.model.forward_backbone(x)
        heatmaps, tags = self._split(self.model.keypoint_head(feat))
        out = {"backbone": feat}
        hm_f = tg_f = None
        if self.flip_test:
            feat_f = self.model.forward_backbone(torch.flip(x, [3]))
            hm_f, tg_f = self._split(self.model.keypoint_head(feat_f))
            hm_f, tg_f = self._flip_back(hm_f), self._flip_back(tg_f)
            out["backbone_flip"] = feat_f
        w_res, h_res = base_size
        size = (h_res, w_res) if self.spec.project2image else tuple(heatmaps[-1].shape[2:])

        def average(maps: list[torch.Tensor]) -> torch.Tensor:
            acc = 0
            for m in maps:
                acc = acc + _resize(m, size, ac)
            return acc / len(maps)

        agg = average(heatmaps)
        if hm_f is not None:
            agg = (agg + average(hm_f)) / 2.0
        tag_size = (h_res, w_res) if self.spec.project2image else tuple(tags[-1].shape[2:])
        tag_list = [_resize(t, tag_size, ac) for t in tags + (tg_f or [])]
        tag_list = [_resize(t, tuple(agg.shape[2:]), ac) for t in tag_list]
        out["heatmaps"] = agg
        out["tags"] = torch.stack(tag_list, dim=4)
        return out

    # -------------------------------------------------------------------------------------------------- grouping
    def group(self, heatmaps: torch.Tensor, tags: torch.Tensor, meta: ImageMeta) -> dict[str, np.ndarray]:
        """Grouping and back-projection of one image (CPU): heatmaps (K,h,w), tags (K,h,w,L)."""
        people, scores = parse(
            heatmaps,
            tags,
            self.params,
            adjust=self.adjust,
            refine=self.refine,
            use_udp=self.use_udp,
            solver=self.solver,
        )
        heatmap_size = (heatmaps.shape[-1], heatmaps.shape[-2])
        people = group_to_image(people, meta.center, meta.scale, heatmap_size, self.use_udp)
        return people_to_results(people, scores, self.pose_nms_threshold, self.sigmas)

    def __call__(self, images: Sequence[np.ndarray] | torch.Tensor) -> list[dict[str, np.ndarray]]:
        x, metas = self.preprocess(images)
        out = self.network(x, metas[0].base_size)
        heatmaps = out["heatmaps"].float().cpu()
        tags = out["tags"].float().cpu()
        return [self.group(heatmaps[i], tags[i], meta) for i, meta in enumerate(metas)]


def build_pose_model(arch: str, width_mult: float = 1.0, head_channels: int = 256) -> nn.Module:
    """The network of ``arch`` with random weights (mmpose state-dict layout); the widths apply to MobileNetV2."""
    if arch in HRNET_VARIANTS:
        return HigherHRNet(HRNET_VARIANTS[arch])
    if arch in ("mobilenetv2", "mobilenetv2_lab"):
        return MobileNetV2AE(width_mult, head_channels=head_channels)
    raise ValueError(f"unknown pose arch {arch!r}")


def load_mmpose_checkpoint(
    model: nn.Module, checkpoint: str | Path | dict, arch: str, config_key: str | None = None
) -> None:
    """Load an mmpose 0.x checkpoint (file or state dict) strictly into a model of ``build_pose_model(arch)``."""
    spec = ARCHS.get(arch)
    if isinstance(checkpoint, dict):
        state_dict, source = checkpoint, "state dict"
    else:
        state_dict = read_state_dict(checkpoint, config_key=config_key, what=spec.what if spec else None)
        source = str(checkpoint)
    rename = rename_mmpose_key if isinstance(model, MobileNetV2AE) else None
    try:
        load_state_dict_strict(model, state_dict, source=source, rename=rename)
    except CheckpointError as err:
        where = f" (config key '{config_key}')" if config_key else ""
        expected = f"; expected: {spec.what}" if spec else ""
        raise CheckpointError(f"{err}\nIs it the right file{where}{expected}?") from err
