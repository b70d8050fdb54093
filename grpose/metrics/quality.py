"""Image-quality metrics: FID, KID (torchmetrics, local Inception weights), CLIP-score (docs/metrics.md §8)."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

logger = logging.getLogger(__name__)

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_DESCRIPTION = (
    f"'{INCEPTION_FILENAME}': the FID Inception-v3 weights (TensorFlow 'inception-2015-12-05' graph converted to a "
    "PyTorch state dict; pytorch-fid ships it under this name, torch-fidelity as "
    "'weights-inception-2015-12-05-6726825d.pth' - either file works)"
)
#: open_clip model name of the CLIP-score model the paper's table used: OpenAI ViT-B/16 (HumanSD / Stable-Pose
#: metric code: torchmetrics CLIPScore with ``openai/clip-vit-base-patch16``); OpenAI weights use QuickGELU.
DEFAULT_CLIP_MODEL = "ViT-B-16-quickgelu"
CLIP_DESCRIPTION = (
    "an open_clip checkpoint file for the chosen model (state dict, .safetensors, or the OpenAI TorchScript "
    "'ViT-B-16.pt'; e.g. open_clip_pytorch_model.bin of the OpenAI ViT-B/16 weights, hub repo "
    "timm/vit_base_patch16_clip_224.openai, with model name 'ViT-B-16-quickgelu'; other models: pass their "
    "open_clip name, e.g. 'ViT-L-14-quickgelu' for OpenAI ViT-L/14)"
)
FEATURE_NAMES = ("64", "192", "768", "2048")


def _require_file(path: str | Path | None, what: str, key: str) -> Path:
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"{key}: no file at {path!r}. Expected {what}. Nothing is downloaded; put the file there."
        )
    return Path(path)


class InceptionFeatures(nn.Module):
    """torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's FID Inception) returning several feature layers.

    Input: uint8 RGB (B, 3, H, W); it is resized to 299x299 inside (bilinear, antialias as torchmetrics' default)
    and scaled to [-1, 1] - exactly what torchmetrics' FID/KID do with ``normalize=False`` (no Q17 double
    normalisation). Output: {feature name: (B, D) float64}.
    """

    def __init__(self, weights_path: str | Path, features: Sequence[str] = ("64", "2048"), antialias: bool = True):
        super().__init__()
        path = _require_file(weights_path, INCEPTION_DESCRIPTION, "--inception / metrics.inception_path")
        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError("FID/KID need the pure-Python package torch-fidelity: pip install torch-fidelity")
        from torchmetrics.image.fid import NoTrainInceptionV3

        bad = [f for f in features if str(f) not in FEATURE_NAMES]
        if bad:
            raise ValueError(f"unknown Inception features {bad}; choose from {FEATURE_NAMES}")
        self.features = [str(f) for f in features]
        try:
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=list(self.features),
                feature_extractor_weights_path=str(path),
                antialias=antialias,
            )
        except RuntimeError as err:  # strict load_state_dict mismatch
            raise RuntimeError(f"{path} is not a usable {INCEPTION_DESCRIPTION}: {err}") from err

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 RGB images (B, 3, H, W), got {tuple(images.shape)} {images.dtype}")
        out = self.net._torch_fidelity_forward(images)
        return {name: feat.reshape(images.shape[0], -1).double().cpu() for name, feat in zip(self.features, out)}


def extract_features(
    images: Iterable[Tensor], extractor: nn.Module, batch_size: int = 16, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Run ``extractor`` over uint8 (3,H,W) or (B,3,H,W) tensors of one size; returns {name: (N, D) float64}."""
    extractor = extractor.to(device)
    chunks: dict[str, list[Tensor]] = {}
    pending: list[Tensor] = []

    def flush() -> None:
        if pending:
            feats = extractor(torch.cat(pending).to(device))
            for k, v in feats.items():
                chunks.setdefault(k, []).append(v)
            pending.clear()

    count = 0
    for img in images:
        pending.append(img[None] if img.ndim == 3 else img)
        count += pending[-1].shape[0]
        if count >= batch_size:
            flush()
            count = 0
    flush()
    return {k: torch.cat(v) for k, v in chunks.items()}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics' FID/KID can be fed features computed once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def fid_from_features(real: Tensor, fake: Tensor) -> float | None:
    """torchmetrics FID on precomputed features; None when either side has < 2 samples."""
    if len(real) < 2 or len(fake) < 2:
        return None
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(
    real: Tensor, fake: Tensor, subset_size: int = 200, subsets: int = 100, seed: int = 0
) -> tuple[float, float] | None:
    """torchmetrics KID (poly kernel, degree 3) on precomputed features, ``subset_size`` clamped to the number
    of samples of the smaller side; subsets drawn with a fixed seed. None when a side has < 2 samples."""
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        return None
    with _quiet():
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def quality_from_features(
    real: Mapping[str, Mapping[str, Tensor]],
    fake: Mapping[str, Mapping[str, Tensor]],
    fid_feature: str = "64",
    kid_feature: str = "2048",
    kid_subset_size: int = 200,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """FID/KID per scene against that scene's real images, their mean over scenes (released,
    docs/release_behaviours.md §13.4/Q22: scenes
    without a value are left out of the mean) and over the pooled set. ``real``/``fake``: {scene: {feature
    name: (N, D)}}; scenes present on both sides are scored.

    Keys: ``per_scene`` {scene: {fid, kid, kid_std, num_real, num_fake}}, ``fid_scene_mean``,
    ``kid_scene_mean``, ``fid_pooled``, ``kid_pooled``, ``kid_pooled_std``, ``fid_feature``, ``kid_feature``,
    ``kid_subset_size``, ``num_real``, ``num_fake``, ``scenes_missing_real``.
    """
    scenes = sorted(set(real) & set(fake))
    missing = sorted(set(fake) - set(real))
    if missing:
        logger.warning("no real images for scenes %s; they only enter the pooled numbers' fake side", missing)
    per_scene: dict[str, dict[str, Any]] = {}
    for scene in scenes:
        r, f = real[scene], fake[scene]
        kid = kid_from_features(r[kid_feature], f[kid_feature], kid_subset_size, kid_subsets, seed)
        per_scene[scene] = {
            "fid": fid_from_features(r[fid_feature], f[fid_feature]),
            "kid": None if kid is None else kid[0],
            "kid_std": None if kid is None else kid[1],
            "num_real": len(r[fid_feature]),
            "num_fake": len(f[fid_feature]),
        }

    def scene_mean(key: str) -> float | None:
        vals = [v[key] for v in per_scene.values() if v[key] is not None]
        return float(np.mean(vals)) if vals else None

    def pooled(side: Mapping[str, Mapping[str, Tensor]], name: str) -> Tensor:
        return torch.cat([side[s][name] for s in sorted(side)])

    kid_all = kid_from_features(
        pooled(real, kid_feature), pooled(fake, kid_feature), kid_subset_size, kid_subsets, seed
    )
    return {
        "per_scene": per_scene,
        "fid_scene_mean": scene_mean("fid"),
        "kid_scene_mean": scene_mean("kid"),
        "fid_pooled": fid_from_features(pooled(real, fid_feature), pooled(fake, fid_feature)),
        "kid_pooled": None if kid_all is None else kid_all[0],
        "kid_pooled_std": None if kid_all is None else kid_all[1],
        "fid_feature": int(fid_feature),
        "kid_feature": int(kid_feature),
        "kid_subset_size": kid_subset_size,
        "num_real": sum(len(v[fid_feature]) for v in real.values()),
        "num_fake": sum(len(v[fid_feature]) for v in fake.values()),
        "scenes_missing_real": missing,
    }


def evaluate_quality(
    real: Mapping[str, Iterable[Tensor]],
    fake: Mapping[str, Iterable[Tensor]],
    inception_path: str | Path,
    fid_feature: int | str = 64,
    kid_feature: int | str = 2048,
    kid_subset_size: int = 200,
    kid_subsets: int = 100,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    extractor: nn.Module | None = None,
) -> dict[str, Any]:
    """FID (``feature=64`` as released, configurable) and KID (2048-d, subset 200 clamped) per scene and pooled.

    ``real``/``fake``: {scene: iterable of uint8 RGB tensors (3,H,W) or (B,3,H,W)}, already brought to a common
    size by the caller (``center_crop_resize``). Features are computed once per image with the local Inception
    weights (``inception_path``; or a ready ``extractor``) and shared by all per-scene and pooled numbers.
    Returns ``quality_from_features``' dict.
    """
    names = sorted({str(fid_feature), str(kid_feature)})
    net = extractor if extractor is not None else InceptionFeatures(inception_path, names)
    feats_real = {s: extract_features(imgs, net, batch_size, device) for s, imgs in real.items()}
    feats_fake = {s: extract_features(imgs, net, batch_size, device) for s, imgs in fake.items()}
    feats_real = {s: v for s, v in feats_real.items() if v}
    feats_fake = {s: v for s, v in feats_fake.items() if v}
    return quality_from_features(
        feats_real, feats_fake, str(fid_feature), str(kid_feature), kid_subset_size, kid_subsets, seed
    )


def center_crop_resize(image: Image.Image, size: int) -> Tensor:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and centre-crop to size x size; returns uint8
    (3, size, size) RGB. Used for real and generated images alike (unlike Q17, where only reals were cropped)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_clip(
    checkpoint: str | Path, model_name: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any, Any]:
    """open_clip model, eval image transform and tokenizer from a LOCAL checkpoint file (nothing downloaded).

    Default: the OpenAI ViT-B/16 weights (``ViT-B-16-quickgelu``) that the paper's CLIP-score used. Other models
    by their open_clip name, e.g. OpenAI ViT-L/14 (torchmetrics' CLIPScore default) ``ViT-L-14-quickgelu``,
    LAION weights ``ViT-L-14``."""
    import open_clip

    path = _require_file(checkpoint, CLIP_DESCRIPTION, "--clip / metrics.clip_path")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(path), device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


@torch.no_grad()
def clip_score(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    model: nn.Module,
    preprocess: Any,
    tokenizer: Any,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """CLIP-score as torchmetrics defines it: mean over pairs of 100 * max(cos(image emb, text emb), 0).

    Images go through open_clip's own eval transform (shorter side to the model resolution, bicubic, centre crop,
    CLIP mean/std); prompts are truncated to the context length by the tokenizer. Not in the release
    (docs/release_behaviours.md §13.5).
    Returns {'clip_score', 'num_pairs'}.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    scores = []
    for s in range(0, len(images), batch_size):
        pix = torch.stack([preprocess(im.convert("RGB")) for im in images[s : s + batch_size]]).to(device)
        tok = tokenizer(list(prompts[s : s + batch_size])).to(device)
        img = model.encode_image(pix).float()
        txt = model.encode_text(tok).float()
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        scores.append(100.0 * cos.clamp(min=0))
    if not scores:
        return {"clip_score": math.nan, "num_pairs": 0}
    return {"clip_score": float(torch.cat(scores).mean()), "num_pairs": len(images)}
