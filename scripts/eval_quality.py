"""FID/KID (per scene, scene mean and pooled) and CLIP-score of the panels written by eval_pose.py.

    python scripts/eval_quality.py --images OUTDIR --real_map MAPPING_JSON --base DIR \
        [--inception models/pt_inception-2015-12-05-6726825d.pth] [--clip CLIP_CKPT] [--clip_model ViT-B-16-quickgelu]
        [--out metrics_quality.json]

Generated panels ``OUTDIR/images/<scene>/<name>.<ext>`` are [generated | skeleton | prompt | ground truth] strips of
square tiles; the first H columns (H = panel height) are the generated image. Real images: the mapping entries
whose ``img_path`` lies in ``images/<scene>/`` (all of the scene's entries, as released; ``--matched_only`` keeps
only those with a generated panel). Reals and fakes are both resized (shorter side, bicubic) and centre-cropped to
H x H, passed to the metrics as uint8 RGB (no BGR swap, no double normalisation:
docs/release_behaviours.md Q17/Q18 are not reproduced).
Prompts for the CLIP-score come from the mapping entry with the same scene and file stem.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grpose.data.pose_dataset import load_mapping, scene_of  # noqa: E402
from grpose.metrics.quality import (  # noqa: E402
    DEFAULT_CLIP_MODEL,
    INCEPTION_FILENAME,
    InceptionFeatures,
    center_crop_resize,
    clip_score,
    evaluate_quality,
    load_clip,
)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="eval_pose output dir (holding images/<scene>/) or its images/")
    p.add_argument("--real_map", required=True, help="mapping JSON {id: {img_path, prompt, pose_path}}")
    p.add_argument("--base", default=None, help="dataset root the mapping's img_path is relative to")
    p.add_argument("--inception", default=str(ROOT / "models" / INCEPTION_FILENAME), help="local FID Inception")
    p.add_argument("--clip", default=None, help="local open_clip checkpoint; CLIP-score is skipped without it")
    p.add_argument(
        "--clip_model",
        default=DEFAULT_CLIP_MODEL,
        help=f"open_clip model name of --clip (default {DEFAULT_CLIP_MODEL}: OpenAI ViT-B/16, as the paper's table)",
    )
    p.add_argument("--fid_feature", type=int, default=64, choices=(64, 192, 768, 2048), help="64 as released")
    p.add_argument("--kid_feature", type=int, default=2048, choices=(64, 192, 768, 2048))
    p.add_argument("--kid_subset_size", type=int, default=200)
    p.add_argument("--kid_subsets", type=int, default=100)
    p.add_argument("--matched_only", action="store_true", help="real set = only images with a generated panel")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output JSON (default: <images dir>/metrics_quality.json)")
    return p.parse_args(argv)


def find_panels(images_dir: Path) -> dict[tuple[str, str], Path]:
    """{(scene, stem): panel path} of ``images_dir/<scene>/<name>.<ext>``."""
    panels = {}
    for path in sorted(images_dir.glob("*/*")):
        if path.suffix.lower() in IMAGE_EXTS and path.is_file():
            panels[(path.parent.name, path.stem)] = path
    return panels


def generated_tile(path: Path) -> Image.Image:
    """The first H columns of an H-high panel: the generated image."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w < h:
            raise ValueError(f"{path}: panel {w}x{h} is narrower than high; expected [generated | ...] tiles")
        return im.crop((0, 0, h, h))


def _tensors(paths: list[Path], size: int, panel: bool) -> Iterator[torch.Tensor]:
    for path in paths:
        if panel:
            yield center_crop_resize(generated_tile(path), size)
        else:
            with Image.open(path) as im:
                yield center_crop_resize(im, size)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    images_dir = Path(args.images)
    if (images_dir / "images").is_dir():
        images_dir = images_dir / "images"
    panels = find_panels(images_dir)
    if not panels:
        raise SystemExit(f"no generated panels under {images_dir}/<scene>/")
    mapping_path = Path(args.real_map)
    base = Path(args.base) if args.base else mapping_path.parent
    mapping = load_mapping(mapping_path)

    reals: dict[str, list[Path]] = defaultdict(list)
    prompts: dict[tuple[str, str], str] = {}
    scenes = {s for s, _ in panels}
    unreadable: list[str] = []
    for entry in mapping.values():
        img_path = entry["img_path"]
        key = (scene_of(img_path), Path(img_path).stem)
        prompts[key] = entry.get("prompt", "")
        if key[0] in scenes and (not args.matched_only or key in panels):
            if (base / img_path).is_file():
                reals[key[0]].append(base / img_path)
            else:
                unreadable.append(str(base / img_path))
    if unreadable:
        print(f"warning: {len(unreadable)} real images missing, e.g. {unreadable[:3]}", file=sys.stderr)
    missing = [k for k in panels if k not in prompts]
    if missing:
        print(f"warning: {len(missing)} panels have no mapping entry, e.g. {missing[:3]}", file=sys.stderr)

    with Image.open(next(iter(panels.values()))) as first:
        size = first.size[1]
    fakes: dict[str, list[Path]] = defaultdict(list)
    for (scene, _), path in sorted(panels.items()):
        fakes[scene].append(path)
    print(
        f"{len(panels)} generated panels in {len(fakes)} scenes, {sum(map(len, reals.values()))} real images; "
        f"images compared at {size}x{size}"
    )

    extractor = InceptionFeatures(args.inception, sorted({str(args.fid_feature), str(args.kid_feature)}))
    result = evaluate_quality(
        {s: _tensors(sorted(p), size, panel=False) for s, p in reals.items()},
        {s: _tensors(p, size, panel=True) for s, p in fakes.items()},
        inception_path=args.inception,
        fid_feature=args.fid_feature,
        kid_feature=args.kid_feature,
        kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        extractor=extractor,
    )

    if args.clip:
        model, preprocess, tokenizer = load_clip(args.clip, args.clip_model, args.device)
        total, count = 0.0, 0
        for scene, paths in sorted(fakes.items()):
            keys = [(scene, p.stem) for p in paths if (scene, p.stem) in prompts]
            if not keys:
                continue
            tiles = [generated_tile(panels[k]) for k in keys]
            res = clip_score(
                tiles, [prompts[k] for k in keys], model, preprocess, tokenizer, args.batch_size, args.device
            )
            result["per_scene"].setdefault(scene, {})["clip_score"] = res["clip_score"]
            total += res["clip_score"] * res["num_pairs"]
            count += res["num_pairs"]
        result["clip_score"] = total / count if count else None
        result["clip_model"] = args.clip_model
        result["clip_checkpoint"] = str(args.clip)
    else:
        result["clip_score"] = None
        result["clip_model"] = None
        print("CLIP-score skipped (pass --clip PATH to a local open_clip checkpoint)", file=sys.stderr)
    result["image_size"] = size

    out = Path(args.out) if args.out else images_dir.parent / "metrics_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for key in ("fid_scene_mean", "kid_scene_mean", "fid_pooled", "kid_pooled", "clip_score"):
        print(f"{key:>15}: {result[key]}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
