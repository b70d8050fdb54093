"""Eval panels: ``images/<scene>/<name>.jpg`` strips [generated | skeleton | prompt | ground truth] of square tiles,
written by the evaluation and read back for quality metrics and for scoring images made elsewhere (README
"Evaluation")."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def make_panel(generated: np.ndarray, skeleton: np.ndarray, prompt: str, truth: np.ndarray) -> np.ndarray:
    """[generated | skeleton | prompt | ground truth], each H x H."""
    h, w = generated.shape[:2]
    text = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(text)
    draw.multiline_text((4, 4), "\n".join(textwrap.wrap(prompt, width=max(8, w // 7))), fill=(0, 0, 0))
    return np.concatenate([generated, skeleton, np.asarray(text), truth], axis=1)


def panel_path(out_dir: Path, sample: dict[str, Any]) -> Path:
    return out_dir / "images" / sample["scene"] / (Path(sample["img_path"]).stem + ".jpg")


def save_panel(out_dir: Path, sample: dict[str, Any], image: np.ndarray) -> None:
    """The panel of one generated uint8 image and its test entry (a PoseDataset sample)."""
    from grpose.pose.skeleton import render_skeleton

    h, w = image.shape[:2]
    skeleton = render_skeleton(sample["pose"], h, w)
    truth = np.clip((sample["jpg"] + 1) * 127.5, 0, 255).round().astype(np.uint8)
    path = panel_path(out_dir, sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_panel(image, skeleton, sample["txt"], truth)).save(path, quality=95)


def load_generated(images_dir: Path, sample: dict[str, Any]) -> np.ndarray:
    """The generated image of an entry from ``images_dir/<scene>/<name>.*`` as uint8 RGB at the test image size.

    An eval panel (width = 4 x height) is cut to its first square; other sizes are resized to the dataset's crop
    size, in whose coordinates the ground-truth poses are.
    """
    stem = Path(sample["img_path"]).stem
    candidates = [images_dir / sample["scene"] / f"{stem}{ext}" for ext in (".jpg", ".png", ".jpeg", ".webp")]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise SystemExit(f"--images_dir: no generated image for entry {sample['id']} (looked for {candidates[0]})")
    image = Image.open(path).convert("RGB")
    if image.width == 4 * image.height:
        image = image.crop((0, 0, image.height, image.height))
    size = sample["jpg"].shape[0]
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image)


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
