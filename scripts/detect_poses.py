"""Detect poses in a folder of images: COCO keypoint JSON, optional overlays, and dataset-format pose npz files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpose.checkpoint import CheckpointError  # noqa: E402
from grpose.pose.estimator import ARCHS, BottomUpPoseEstimator  # noqa: E402
from grpose.trust import add_trust_argument, honours_trust_flag  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for a stable image id order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"could not read image {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


def person_records(result: dict[str, np.ndarray], image_id: int, min_score: float) -> list[dict]:
    """COCO results-format records ({image_id, category_id 1, keypoints (51 floats), score, bbox, area})."""
    records = []
    for kpts, score, area in zip(result["keypoints"], result["scores"], result["areas"]):
        if float(score) < min_score:
            continue
        vis = kpts[:, 2] > 0
        lo = kpts[vis, :2].min(axis=0) if vis.any() else np.zeros(2)
        hi = kpts[vis, :2].max(axis=0) if vis.any() else np.zeros(2)
        records.append(
            {
                "image_id": image_id,
                "category_id": 1,
                "keypoints": [round(float(v), 3) for v in kpts.reshape(-1)],
                "score": float(score),
                "bbox": [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])],
                "area": float(area),
            }
        )
    return records


def dataset_people(result: dict[str, np.ndarray], min_score: float) -> list[dict[str, np.ndarray]]:
    """Person dicts of the dataset's pose npz format: keypoints (17, 3) x, y, score (0, 0, 0 = not detected), bbox."""
    people = []
    for kpts, score in zip(result["keypoints"], result["scores"]):
        if float(score) < min_score:
            continue
        kp = np.where(kpts[:, 2:3] > 0, kpts, 0).astype(np.float32)
        vis = kp[:, 2] > 0
        lo = kp[vis, :2].min(axis=0) if vis.any() else np.zeros(2, np.float32)
        hi = kp[vis, :2].max(axis=0) if vis.any() else np.zeros(2, np.float32)
        people.append({"keypoints": kp, "bbox": np.array([*lo, *(hi - lo)], np.float32)})
    return people


@honours_trust_flag
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_trust_argument(ap)
    ap.add_argument("images", type=Path, help="folder of images (searched recursively)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--arch", default="higherhrnet_w48", choices=sorted(ARCHS))
    ap.add_argument("--checkpoint", default=None, help="mmpose checkpoint (default: the arch's file in models/)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--input_size", type=int, default=512, help="network input size (the configs use 512)")
    ap.add_argument(
        "--channel_order",
        default="rgb",
        choices=["rgb", "bgr"],
        help="rgb = correct use; bgr reproduces the released evaluation's channel swap",
    )
    ap.add_argument("--pose_nms_threshold", type=float, default=1.0)
    ap.add_argument("--min_score", type=float, default=0.0, help="drop people scoring below this")
    ap.add_argument("--overlay", action="store_true", help="also write images with the skeletons drawn")
    ap.add_argument("--no_dataset", action="store_true", help="do not write pose/<name>.npz + mapping json")
    ap.add_argument("--prompt", default="", help="prompt written to the mapping file for every image")
    ap.add_argument("--random_init", action="store_true", help="random weights (smoke tests only)")
    args = ap.parse_args(argv)

    checkpoint = args.checkpoint or (None if args.random_init else ARCHS[args.arch].checkpoint)
    try:
        est = BottomUpPoseEstimator(
            args.arch,
            checkpoint,
            device=args.device,
            channel_order=args.channel_order,
            pose_nms_threshold=args.pose_nms_threshold,
            allow_random_init=args.random_init,
            input_size=args.input_size,
        )
    except CheckpointError as err:
        raise SystemExit(f"--checkpoint: {err}") from err
    paths = find_images(args.images)
    if not paths:
        raise SystemExit(f"no images found under {args.images}")
    args.out.mkdir(parents=True, exist_ok=True)
    coco_images, results, mapping = [], [], {}
    for image_id, path in enumerate(paths, start=1):
        rgb = read_rgb(path)
        (res,) = est([rgb])
        rel = path.relative_to(args.images)
        coco_images.append({"id": image_id, "file_name": str(rel), "height": rgb.shape[0], "width": rgb.shape[1]})
        results.extend(person_records(res, image_id, args.min_score))
        if not args.no_dataset:
            pose_rel = Path("pose") / rel.with_suffix(".npz")
            (args.out / pose_rel).parent.mkdir(parents=True, exist_ok=True)
            people = dataset_people(res, args.min_score)
            np.savez(args.out / pose_rel, arr_0=np.array(people, dtype=object))
            mapping[str(rel.with_suffix(""))] = {
                "img_path": os.path.relpath(path, args.out),
                "prompt": args.prompt,
                "pose_path": str(pose_rel),
            }
        if args.overlay:
            import cv2

            from grpose.pose.skeleton import render_skeleton

            drawn = render_skeleton(res["keypoints"], rgb.shape[0], rgb.shape[1], canvas=rgb)
            target = args.out / "overlay" / rel.with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), drawn[..., ::-1])
        print(f"{rel}: {len(res['scores'])} people")
    (args.out / "keypoints_results.json").write_text(json.dumps(results))
    (args.out / "images.json").write_text(json.dumps({"images": coco_images}, indent=1))
    if mapping:
        (args.out / "mapping_file.json").write_text(json.dumps(mapping, indent=1))
    print(f"{len(results)} people in {len(paths)} images -> {args.out}")


if __name__ == "__main__":
    main()
