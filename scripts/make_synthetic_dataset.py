"""Write a synthetic pose dataset in the Human-Art/HumanSD format (images, pose npz files, mapping JSONs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grpose.data.synthetic import SCENES, make_synthetic_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python scripts/make_synthetic_dataset.py --out DIR --num N [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--num", type=int, required=True, help="number of images (training + validation)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--height", type=int, default=96, help="nominal image height in pixels (varied per image)")
    parser.add_argument("--width", type=int, default=128, help="nominal image width in pixels (varied per image)")
    parser.add_argument("--val_fraction", type=float, default=0.25, help="fraction of images in the validation split")
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), help="scene folder names under images/")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error("--num must be at least 1")
    summary = make_synthetic_dataset(
        args.out,
        args.num,
        seed=args.seed,
        image_size=(args.height, args.width),
        val_fraction=args.val_fraction,
        scenes=tuple(args.scenes),
    )
    print(
        f"wrote {summary['num_training']} training + {summary['num_validation']} validation images "
        f"({summary['num_people']} people) to {summary['out_dir']}"
    )
    print(f"  {summary['mapping_training']}\n  {summary['mapping_validation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
