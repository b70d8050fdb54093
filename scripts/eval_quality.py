"""FID/KID (per scene, scene mean and pooled) and CLIP-score of the panels written by eval_pose.py.

    python scripts/eval_quality.py --images OUTDIR --real_map MAPPING_JSON --base DIR \
        [--inception models/pt_inception-2015-12-05-6726825d.pth] [--clip CLIP_CKPT] [--clip_model ViT-B-16-quickgelu]
        [--out metrics_quality.json]

Generated panels ``OUTDIR/images/<scene>/<name>.<ext>``; real images: the mapping entries of the same scenes. What
is compared and how: grpose/evaluation/quality.py (docs/metrics.md §8).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grpose.data.pose_dataset import load_mapping  # noqa: E402
from grpose.evaluation.quality import DEFAULT_INCEPTION, FEATURE_SIZES, panel_quality  # noqa: E402
from grpose.metrics.quality import DEFAULT_CLIP_MODEL  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="eval_pose output dir (holding images/<scene>/) or its images/")
    p.add_argument("--real_map", required=True, help="mapping JSON {id: {img_path, prompt, pose_path}}")
    p.add_argument("--base", default=None, help="dataset root the mapping's img_path is relative to")
    p.add_argument("--inception", default=str(DEFAULT_INCEPTION), help="local FID Inception")
    p.add_argument("--clip", default=None, help="local open_clip checkpoint; CLIP-score is skipped without it")
    p.add_argument(
        "--clip_model",
        default=DEFAULT_CLIP_MODEL,
        help=f"open_clip model name of --clip (default {DEFAULT_CLIP_MODEL}: OpenAI ViT-B/16, as the paper's table)",
    )
    p.add_argument("--fid_feature", type=int, default=64, choices=FEATURE_SIZES, help="64 as released")
    p.add_argument("--kid_feature", type=int, default=2048, choices=FEATURE_SIZES)
    p.add_argument("--kid_subset_size", type=int, default=200)
    p.add_argument("--kid_subsets", type=int, default=100)
    p.add_argument("--matched_only", action="store_true", help="real set = only images with a generated panel")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output JSON (default: <images dir>/metrics_quality.json)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    mapping_path = Path(args.real_map)
    return panel_quality(
        args.images,
        mapping=load_mapping(mapping_path),
        base_dir=Path(args.base) if args.base else mapping_path.parent,
        inception=args.inception,
        clip=args.clip,
        clip_model=args.clip_model,
        fid_feature=args.fid_feature,
        kid_feature=args.kid_feature,
        kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets,
        matched_only=args.matched_only,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        out=args.out,
    )


if __name__ == "__main__":
    main()
