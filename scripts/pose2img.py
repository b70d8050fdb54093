"""Generate images for a prompt and a pose (pose npz, COCO-keypoints JSON or a rendered skeleton image).

    python scripts/pose2img.py --config configs/grpose/humanart.yaml --ckpt CKPT --pose pose.npz \
        --prompt "a dancer on a stage" --out outputs/pose2img [--base_model other_sd15.safetensors]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grpose.trust import add_trust_argument, honours_trust_flag  # noqa: E402

log = logging.getLogger("grpose.pose2img")


def load_pose(
    path: Path, size: int, source_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (hint uint8 (size, size, 3), pose (P, 17, 3) or None) from a pose file or a skeleton image.

    With ``source_size`` (W, H of the image the keypoints were taken from) the keypoints follow the evaluation
    dataset's shorter-side resize and centre crop; without it the people's bounding box (plus a 10% margin) is
    fitted into the square.
    """

    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg", ".webp"):
        from PIL import Image

        return square_crop(Image.open(path).convert("RGB"), size), None
    if suffix == ".npz":
        people = np.load(path, allow_pickle=True)["arr_0"]
        pose = np.stack([np.asarray(p["keypoints"], dtype=np.float32).reshape(17, 3) for p in people])
    elif suffix == ".json":
        data = json.loads(path.read_text())
        annotations = data["annotations"] if isinstance(data, dict) else data
        pose = np.stack([np.asarray(a["keypoints"], dtype=np.float32).reshape(17, 3) for a in annotations])
    else:
        raise SystemExit(f"--pose {path}: unsupported file type (use .npz, COCO .json or a skeleton image)")
    if not (pose[..., 2] > 0).any():
        raise SystemExit(f"--pose {path}: no keypoint with a positive score")
    return fit_pose(pose, size, source_size)


def square_crop(image, size: int) -> np.ndarray:
    """A PIL RGB image resized so its shorter side is ``size`` (bilinear), centre-cropped to (size, size, 3)."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def fit_pose(pose: np.ndarray, size: int, source_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Poses (P, 17, 3) in source pixels -> (skeleton image (size, size, 3), poses in its pixels): the evaluation
    crop when ``source_size`` is given, else the people's bounding box (plus 10 %) fitted into the square."""
    from grpose.pose.skeleton import render_skeleton

    valid = pose[..., 2] > 0
    pose = pose.copy()
    xy = pose[..., :2][valid]  # (V, 2)
    if source_size is not None:
        scale = size / min(source_size)
        offset = (np.array(source_size, dtype=np.float32) * scale - size) / 2
    else:
        lo, hi = xy.min(0), xy.max(0)
        scale = size / (float((hi - lo).max()) * 1.2 + 1e-6)
        offset = (lo + hi) / 2 * scale - size / 2
    pose[..., :2] = pose[..., :2] * scale - offset
    inside = valid & (pose[..., 0] >= 0) & (pose[..., 0] < size) & (pose[..., 1] >= 0) & (pose[..., 1] < size)
    pose[~inside] = (-1, -1, 0)
    return render_skeleton(pose, size, size), pose


def hint_batch(hint_rgb: np.ndarray, num: int):
    """(H, W, 3) uint8 skeleton -> (num, 3, H, W) tensor in [-1, 1], the model's hint (copied: the array may be
    read-only)."""
    import torch

    return torch.tensor(hint_rgb).float().div(127.5).sub(1).permute(2, 0, 1)[None].repeat(num, 1, 1, 1)


@honours_trust_flag
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trust_argument(p)
    p.add_argument("--config", nargs="+", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--use_ema", action="store_true", help="sample with the checkpoint's moving average (ema_decay)")
    p.add_argument("--pose", required=True, type=Path)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--num", type=int, default=1, help="images per prompt")
    p.add_argument(
        "--pose_image_size",
        type=int,
        nargs=2,
        default=None,
        metavar=("W", "H"),
        help="size of the image the keypoints come from (default: fit the people into the frame)",
    )
    p.add_argument("--size", type=int, default=None, help="image size (default: the config's test image_size)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scale", type=float, default=9.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--base_model", default=None, help="another SD1.5 checkpoint for the frozen parts")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = p.parse_args(argv)
    from grpose.cli import configure_logging

    configure_logging("%(levelname)s %(name)s: %(message)s")

    import torch
    from PIL import Image

    from grpose.config import load_config
    from grpose.evaluation.model_loading import load_model
    from grpose.pose.skeleton import render_skeleton

    config = load_config(*args.config)
    size = args.size or int(config.data.params.test.params.get("image_size", 512))
    hint_rgb, pose = load_pose(args.pose, size, tuple(args.pose_image_size) if args.pose_image_size else None)
    device = torch.device(args.device)
    model = load_model(config, ckpt=args.ckpt, config_files=args.config, device=device, base_model=args.base_model,
                       use_ema=args.use_ema)  # fmt: skip
    hint = hint_batch(hint_rgb, args.num)
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn((args.num, 4, size // 8, size // 8), generator=generator)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:
        images = model.sample(hint.to(device), [args.prompt] * args.num, noise=noise.to(device), num_steps=args.steps,
                              guidance_scale=args.scale, progress=True)  # fmt: skip
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hint_rgb).save(args.out / "pose.png")
    for i, image in enumerate(images):
        Image.fromarray(image).save(args.out / f"sample_{i:02d}.png")
        if pose is not None:
            Image.fromarray(render_skeleton(pose, size, size, canvas=image.copy())).save(
                args.out / f"overlay_{i:02d}.png"
            )
    print(f"wrote {len(images)} image(s) to {args.out}")
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
