"""FID/KID (per scene, scene mean and pooled) and CLIP-score of the panels of an evaluation (docs/metrics.md §8).

Generated panels ``<run>/images/<scene>/<name>.<ext>`` are [generated | skeleton | prompt | ground truth] strips of
square tiles; the first H columns (H = panel height) are the generated image. Real images: the mapping entries
whose ``img_path`` lies in ``images/<scene>/`` (all of the scene's entries, as released; ``matched_only`` keeps
only those with a generated panel). Reals and fakes are both resized (shorter side, bicubic) and centre-cropped to
H x H, passed to the metrics as uint8 RGB (no BGR swap, no double normalisation: docs/release_behaviours.md
Q17/Q18 are not reproduced). Prompts for the CLIP-score come from the mapping entry with the same scene and file
stem. Called by the evaluation (``--metrics quality|all``) and by scripts/eval_quality.py.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from grpose.data.pose_dataset import scene_of
from grpose.evaluation.panels import find_panels, generated_tile
from grpose.metrics.quality import (
    DEFAULT_CLIP_MODEL,
    INCEPTION_FILENAME,
    InceptionFeatures,
    center_crop_resize,
    clip_score,
    evaluate_quality,
    load_clip,
)

DEFAULT_INCEPTION = Path(__file__).resolve().parents[2] / "models" / INCEPTION_FILENAME
FEATURE_SIZES = (64, 192, 768, 2048)


def quality_settings(quality: Mapping[str, Any]) -> dict[str, Any]:
    """``panel_quality`` keywords from the ``quality`` node of a metrics config (configs/eval/metrics.yaml)."""
    settings: dict[str, Any] = {}
    if quality.get("inception"):
        settings["inception"] = str(quality["inception"])
    if quality.get("clip"):
        settings.update(clip=str(quality["clip"]), clip_model=str(quality.get("clip_arch", DEFAULT_CLIP_MODEL)))
    if quality.get("fid_features") is not None:
        settings["fid_feature"] = int(quality["fid_features"])
    if quality.get("kid_subset_size") is not None:
        settings["kid_subset_size"] = int(quality["kid_subset_size"])
    return settings


def panel_quality(
    images_dir: str | Path,
    *,
    mapping: Mapping[str, Any],
    base_dir: str | Path,
    inception: str | Path = DEFAULT_INCEPTION,
    clip: str | Path | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    fid_feature: int = 64,
    kid_feature: int = 2048,
    kid_subset_size: int = 200,
    kid_subsets: int = 100,
    matched_only: bool = False,
    batch_size: int = 16,
    device: str | None = None,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Quality metrics of the panels under ``images_dir`` (a run directory or its ``images/``) against the real
    images of ``mapping`` (paths relative to ``base_dir``); written to ``out`` (default: the run's
    ``metrics_quality.json``) and returned. CLIP-score only with a local ``clip`` checkpoint."""
    for name, value in (("fid_feature", fid_feature), ("kid_feature", kid_feature)):
        if value not in FEATURE_SIZES:
            raise ValueError(f"{name} {value}: choose one of {FEATURE_SIZES}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    images_dir = Path(images_dir)
    if (images_dir / "images").is_dir():
        images_dir = images_dir / "images"
    panels = find_panels(images_dir)
    if not panels:
        raise SystemExit(f"no generated panels under {images_dir}/<scene>/")
    reals, prompts = real_images(mapping, base=Path(base_dir), panels=panels, matched_only=matched_only)

    with Image.open(next(iter(panels.values()))) as first:
        size = first.size[1]
    fakes: dict[str, list[Path]] = defaultdict(list)
    for (scene, _), path in sorted(panels.items()):
        fakes[scene].append(path)
    print(
        f"{len(panels)} generated panels in {len(fakes)} scenes, {sum(map(len, reals.values()))} real images; "
        f"images compared at {size}x{size}"
    )

    extractor = InceptionFeatures(inception, sorted({str(fid_feature), str(kid_feature)}))
    result = evaluate_quality(
        {s: _tensors(sorted(p), size, panel=False) for s, p in reals.items()},
        {s: _tensors(p, size, panel=True) for s, p in fakes.items()},
        inception_path=inception,
        fid_feature=fid_feature,
        kid_feature=kid_feature,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        batch_size=batch_size,
        device=device,
        seed=seed,
        extractor=extractor,
    )
    if clip:
        add_clip_scores(result, fakes=fakes, panels=panels, prompts=prompts, clip=clip, clip_model=clip_model,
                        batch_size=batch_size, device=device)  # fmt: skip
    else:
        result["clip_score"] = None
        result["clip_model"] = None
        print("CLIP-score skipped (pass --clip PATH to a local open_clip checkpoint)", file=sys.stderr)
    result["image_size"] = size

    out = Path(out) if out else images_dir.parent / "metrics_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for key in ("fid_scene_mean", "kid_scene_mean", "fid_pooled", "kid_pooled", "clip_score"):
        print(f"{key:>15}: {result[key]}")
    print(f"wrote {out}")
    return result


def real_images(
    mapping: Mapping[str, Any], *, base: Path, panels: Mapping[tuple[str, str], Path], matched_only: bool
) -> tuple[dict[str, list[Path]], dict[tuple[str, str], str]]:
    """The real images per scene of the scenes with panels, and every entry's prompt by (scene, stem)."""
    reals: dict[str, list[Path]] = defaultdict(list)
    prompts: dict[tuple[str, str], str] = {}
    scenes = {s for s, _ in panels}
    unreadable: list[str] = []
    for entry in mapping.values():
        img_path = entry["img_path"]
        key = (scene_of(img_path), Path(img_path).stem)
        prompts[key] = entry.get("prompt", "")
        if key[0] in scenes and (not matched_only or key in panels):
            if (base / img_path).is_file():
                reals[key[0]].append(base / img_path)
            else:
                unreadable.append(str(base / img_path))
    if unreadable:
        print(f"warning: {len(unreadable)} real images missing, e.g. {unreadable[:3]}", file=sys.stderr)
    missing = [k for k in panels if k not in prompts]
    if missing:
        print(f"warning: {len(missing)} panels have no mapping entry, e.g. {missing[:3]}", file=sys.stderr)
    return reals, prompts


def add_clip_scores(
    result: dict[str, Any],
    *,
    fakes: Mapping[str, list[Path]],
    panels: Mapping[tuple[str, str], Path],
    prompts: Mapping[tuple[str, str], str],
    clip: str | Path,
    clip_model: str,
    batch_size: int,
    device: str,
) -> None:
    """CLIP-score per scene and over all panels with a prompt (weighted by pairs), into ``result``."""
    model, preprocess, tokenizer = load_clip(clip, clip_model, device)
    total, count = 0.0, 0
    for scene, paths in sorted(fakes.items()):
        keys = [(scene, p.stem) for p in paths if (scene, p.stem) in prompts]
        if not keys:
            continue
        tiles = [generated_tile(panels[k]) for k in keys]
        res = clip_score(tiles, [prompts[k] for k in keys], model, preprocess, tokenizer, batch_size, device)
        result["per_scene"].setdefault(scene, {})["clip_score"] = res["clip_score"]
        total += res["clip_score"] * res["num_pairs"]
        count += res["num_pairs"]
    result["clip_score"] = total / count if count else None
    result["clip_model"] = clip_model
    result["clip_checkpoint"] = str(clip)


def _tensors(paths: list[Path], size: int, panel: bool) -> Iterator[torch.Tensor]:
    for path in paths:
        if panel:
            yield center_crop_resize(generated_tile(path), size)
        else:
            with Image.open(path) as im:
                yield center_crop_resize(im, size)
