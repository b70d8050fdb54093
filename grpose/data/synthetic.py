"""Synthetic pose dataset in the exact Human-Art/HumanSD on-disk format (procedural people; tests and demos)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

SCENES = ("cartoon", "oil_painting", "dance")
_STYLE = {
    "cartoon": "a cartoon drawing",
    "oil_painting": "an oil painting",
    "dance": "a photo",
    "sculpture": "a sculpture",
    "watercolor": "a watercolor",
}
_ACTIVITIES = ("dancing", "standing", "walking", "jumping", "posing", "stretching", "waving", "running")
_COUNT_WORDS = {1: "one person", 2: "two people", 3: "three people"}
#: Bumped when the same seed draws different images or keypoints; a folder whose ``synthetic_dataset.json``
#: records another version is refused (``ensure_synthetic_dataset``). 2: every figure faces the viewer
#: (``_random_person``).
GENERATOR_VERSION = 2
SPEC_FILE = "synthetic_dataset.json"


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured RGB background: colour gradient, low- and high-frequency noise, a few random shapes."""
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    t = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    if rng.random() < 0.5:
        t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(c0 * (1 - t) + c1 * t, (height, width, 3)).astype(np.float32)
    coarse = rng.normal(0, 25, (max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    image = image + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = image + rng.normal(0, 8, (height, width, 3)).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(4, max(5, width // 3))), int(rng.integers(4, max(5, height // 3)))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), color, -1)
        else:
            cv2.ellipse(image, (x0, y0), (w // 2 + 1, h // 2 + 1), float(rng.uniform(0, 180)), 0, 360, color, -1)
    return image


def _unit(angle: float) -> np.ndarray:
    """Unit vector at ``angle`` radians from straight down (image y grows downwards)."""
    return np.array([math.sin(angle), math.cos(angle)])


def _random_person(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """COCO-17 (x, y) joint positions of a procedurally posed person (may extend out of frame)."""
    body = float(rng.uniform(0.45, 1.1)) * height  # standing height in pixels
    hip = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.45, 0.8) * height])
    lean = float(rng.normal(0, 0.2))
    up = -_unit(lean)  # torso direction (towards the head)
    side = np.array([-up[1], up[0]])  # image-right: the person faces the viewer, so this is their left side
    # Every figure faces the viewer (generator version 2). The figures have no face and their left and right limbs
    # look alike, so a figure seen from the back looked exactly like a mirrored front view with its left/right
    # labels swapped: labels no estimator can read from the image, which capped every lab AP (docs/lab.md §1).
    # The draw that chose the facing in version 1 stays, so every other draw of a seed is unchanged.
    rng.random()
    neck = hip + up * 0.3 * body
    xy = np.zeros((17, 2))
    head = neck + up * 0.12 * body + side * rng.normal(0, 0.02) * body
    xy[0] = head  # nose
    for j, s in ((1, 1), (2, -1)):  # eyes
        xy[j] = head + up * 0.025 * body + side * s * 0.025 * body
    for j, s in ((3, 1), (4, -1)):  # ears
        xy[j] = head + up * 0.01 * body + side * s * 0.05 * body
    shoulder_w, hip_w = 0.12 * body, 0.08 * body
    for j, s in ((5, 1), (6, -1)):  # shoulders, elbows, wrists
        xy[j] = neck + side * s * shoulder_w
        upper = lean + s * float(rng.uniform(-0.3, 2.8))
        lower = upper + s * float(rng.uniform(-0.2, 2.0))
        xy[j + 2] = xy[j] + _unit(upper) * 0.17 * body
        xy[j + 4] = xy[j + 2] + _unit(lower) * 0.15 * body
    for j, s in ((11, 1), (12, -1)):  # hips, knees, ankles
        xy[j] = hip + side * s * hip_w
        thigh = lean + s * float(rng.uniform(-0.2, 0.9))
        shin = thigh - s * float(rng.uniform(-0.1, 1.2))
        xy[j + 2] = xy[j] + _unit(thigh) * 0.24 * body
        xy[j + 4] = xy[j + 2] + _unit(shin) * 0.23 * body
    return xy


def _draw_person(
    image: np.ndarray, xy: np.ndarray, rng: np.random.Generator, body_height: float, mask: np.ndarray | None = None
) -> None:
    """Draw a person as thick coloured capsules (limbs), a filled torso quad and a head disc; ``mask`` (H, W)
    uint8, when given, gets the same shapes in 255 (how much of each pixel the person covers, anti-aliased like
    the image; no extra random draws)."""
    skin = tuple(int(c) for c in rng.integers(90, 256, 3))
    shirt = tuple(int(c) for c in rng.integers(0, 256, 3))
    trousers = tuple(int(c) for c in rng.integers(0, 256, 3))
    scale = max(body_height, 8.0)
    limb_w = max(2, int(scale * 0.05))
    canvases = [(image, None)] if mask is None else [(image, None), (mask, 255)]

    def paint(draw, color: tuple[int, ...]) -> None:
        for canvas, mask_value in canvases:
            draw(canvas, color if mask_value is None else mask_value)

    def capsule(a: int, b: int, color: tuple[int, ...], width: int) -> None:
        pa = tuple(int(round(v)) for v in xy[a])
        pb = tuple(int(round(v)) for v in xy[b])
        paint(lambda c, col: cv2.line(c, pa, pb, col, width, cv2.LINE_AA), color)
        paint(lambda c, col: cv2.circle(c, pa, width // 2, col, -1, cv2.LINE_AA), color)
        paint(lambda c, col: cv2.circle(c, pb, width // 2, col, -1, cv2.LINE_AA), color)

    torso = np.round(xy[[5, 6, 12, 11]]).astype(np.int32)
    paint(lambda c, col: cv2.fillConvexPoly(c, torso, col, cv2.LINE_AA), shirt)
    for a, b in ((11, 13), (13, 15), (12, 14), (14, 16)):
        capsule(a, b, trousers, limb_w + 1)
    for a, b in ((5, 7), (6, 8)):
        capsule(a, b, shirt, limb_w)
    for a, b in ((7, 9), (8, 10)):
        capsule(a, b, skin, limb_w)
    head = tuple(int(round(v)) for v in xy[0])
    paint(lambda c, col: cv2.circle(c, head, max(2, int(scale * 0.065)), col, -1, cv2.LINE_AA), skin)
    for j in (1, 2):
        eye = tuple(int(round(v)) for v in xy[j])
        paint(lambda c, col, eye=eye: cv2.circle(c, eye, max(1, limb_w // 3), col, -1), (20, 20, 20))


def _annotate(rng: np.random.Generator, xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """(17, 3) keypoints: visible joints get a score in [0.3, 1]; some are unannotated (0, 0, 0) or low-score."""
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:, :2] = xy
    keypoints[:, 2] = rng.uniform(0.3, 1.0, 17)
    unannotated = rng.random(17) < 0.08
    low = rng.random(17) < 0.04
    keypoints[low, 2] = 0.01
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    # most out-of-frame joints are unannotated as in Human-Art; a few keep their coordinates to test filtering
    unannotated |= outside & (rng.random(17) < 0.7)
    keypoints[unannotated] = 0.0
    return keypoints


def _prompt(rng: np.random.Generator, scene: str, num_people: int) -> str:
    style = _STYLE.get(scene, f"a {scene.replace('_', ' ')} image")
    activity = _ACTIVITIES[int(rng.integers(len(_ACTIVITIES)))]
    return f"{style} of {_COUNT_WORDS.get(num_people, f'{num_people} people')} {activity}"


def draw_synthetic_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_people: int | None = None,
    masks: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """One RGB uint8 (height, width, 3) image with 1-3 (or ``num_people``) drawn people and their person dicts.

    ``masks``, when given, receives one (height, width) uint8 coverage mask (0-255) per person, in drawing order
    (a later person covers an earlier one); the image and the random draws are the same either way."""
    image = _background(rng, height, width)
    if num_people is None:
        num_people = int(rng.integers(1, 4))
    people = []
    for _ in range(num_people):
        xy = _random_person(rng, height, width)
        mask = None if masks is None else np.zeros((height, width), np.uint8)
        _draw_person(image, xy, rng, float(np.ptp(xy[:, 1])), mask=mask)
        if masks is not None:
            masks.append(mask)
        keypoints = _annotate(rng, xy, height, width)
        present = keypoints[:, 2] > 0
        lo = keypoints[present, :2].min(axis=0) if present.any() else np.zeros(2)
        hi = keypoints[present, :2].max(axis=0) if present.any() else np.zeros(2)
        people.append({"keypoints": keypoints, "bbox": np.array([*lo, *(hi - lo)], np.float32)})
    return image, people


@dataclass
class SyntheticSample:
    """One drawn sample: ``image`` uint8 (H, W, 3) RGB, its person dicts, prompt, split, and (when asked for) one
    (H, W) uint8 mask per person in drawing order."""

    index: int
    scene: str
    name: str
    image: np.ndarray
    people: list[dict[str, np.ndarray]]
    prompt: str
    validation: bool
    masks: list[np.ndarray] | None


def synthetic_samples(
    num_images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (96, 128),
    val_fraction: float = 0.25,
    scenes: tuple[str, ...] = SCENES,
    masks: bool = False,
) -> Iterator[SyntheticSample]:
    """The samples ``make_synthetic_dataset`` writes, in order, drawn in memory (the same random draws);
    ``masks=True`` adds each person's drawn pixels (``draw_synthetic_image``)."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    base_h, base_w = image_size
    num_val = int(round(num_images * val_fraction))
    if num_images >= 2 and val_fraction > 0:
        num_val = min(max(num_val, 1), num_images - 1)
    val_index = set(rng.permutation(num_images)[:num_val].tolist())
    for i in range(num_images):
        scene = scenes[i % len(scenes)]
        height = int(round(base_h * rng.uniform(0.85, 1.2)))
        width = int(round(base_w * rng.uniform(0.65, 1.25)))
        person_masks: list[np.ndarray] | None = [] if masks else None
        image, people = draw_synthetic_image(rng, height, width, masks=person_masks)
        prompt = _prompt(rng, scene, len(people))
        yield SyntheticSample(i, scene, f"{i:06d}", image, people, prompt, i in val_index, person_masks)


def make_synthetic_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (96, 128),
    val_fraction: float = 0.25,
    scenes: tuple[str, ...] = SCENES,
) -> dict[str, Any]:
    """Write ``num_images`` synthetic samples in the HumanSD format under ``out_dir``.

    Files: ``images/<scene>/<name>.jpg``, ``pose/<scene>/<name>.npz`` (``arr_0`` = object array of person dicts
    with ``keypoints`` (17, 3) and ``bbox``), ``mapping_file_training.json`` and ``mapping_file_validation.json``
    (``{id: {img_path, prompt, pose_path}}``, paths relative to ``out_dir``), and ``synthetic_dataset.json``: the
    arguments and ``GENERATOR_VERSION`` that made them (``ensure_synthetic_dataset`` compares it). Each image has
    1-3 people; image sizes vary around ``image_size`` = (height, width) (width about 80-160 px for the default).
    Deterministic for a seed. Returns a summary dict (paths, split sizes, people count).
    """
    out = Path(out_dir)  # synthetic_samples checks the arguments before the first file is written
    training: dict[str, dict[str, str]] = {}
    validation: dict[str, dict[str, str]] = {}
    total_people = 0
    for sample in synthetic_samples(num_images, seed, image_size, val_fraction, scenes):
        total_people += len(sample.people)
        img_rel = f"images/{sample.scene}/{sample.name}.jpg"
        pose_rel = f"pose/{sample.scene}/{sample.name}.npz"
        (out / img_rel).parent.mkdir(parents=True, exist_ok=True)
        (out / pose_rel).parent.mkdir(parents=True, exist_ok=True)
        bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(out / img_rel), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"could not write {out / img_rel}")
        np.savez(out / pose_rel, arr_0=np.array(sample.people, dtype=object))
        entry = {"img_path": img_rel, "prompt": sample.prompt, "pose_path": pose_rel}
        (validation if sample.validation else training)[f"{sample.scene}_{sample.name}"] = entry
    paths = {}
    for split, mapping in (("training", training), ("validation", validation)):
        paths[split] = out / f"mapping_file_{split}.json"
        with open(paths[split], "w", encoding="utf-8") as fh:
            json.dump(mapping, fh, indent=1)
    spec = dataset_spec(num_images, seed, image_size, val_fraction, scenes)
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=1))  # written last: a record of a complete dataset
    log.info("synthetic dataset: %d training + %d validation images in %s", len(training), len(validation), out)
    return {
        "out_dir": str(out),
        "mapping_training": str(paths["training"]),
        "mapping_validation": str(paths["validation"]),
        "num_training": len(training),
        "num_validation": len(validation),
        "num_people": total_people,
    }


def dataset_spec(
    num_images: int, seed: int, image_size: tuple[int, int], val_fraction: float, scenes: tuple[str, ...] = SCENES
) -> dict[str, Any]:
    """What a synthetic dataset is made from: ``make_synthetic_dataset``'s arguments and the generator version."""
    return {"num_images": int(num_images), "seed": int(seed), "image_size": [int(v) for v in image_size],
            "val_fraction": float(val_fraction), "scenes": list(scenes), "generator": GENERATOR_VERSION}  # fmt: skip


def ensure_synthetic_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (96, 128),
    val_fraction: float = 0.25,
    scenes: tuple[str, ...] = SCENES,
) -> Path:
    """Create the synthetic dataset in ``out_dir`` unless it is there; returns ``out_dir``.

    A folder with both mapping files is reused only when its ``synthetic_dataset.json`` records the same
    arguments and generator version; otherwise (other settings, an older generator, or no record: folders made
    before generator version 2) it is refused with what to do, and nothing in it is changed.
    """
    out = Path(out_dir)
    wanted = dataset_spec(num_images, seed, image_size, val_fraction, scenes)
    if not ((out / "mapping_file_training.json").is_file() and (out / "mapping_file_validation.json").is_file()):
        log.info("creating the synthetic dataset (%d images) in %s", num_images, out)
        make_synthetic_dataset(out, num_images, seed=seed, image_size=image_size, val_fraction=val_fraction,
                               scenes=scenes)  # fmt: skip
        return out
    record = out / SPEC_FILE
    found = json.loads(record.read_text()) if record.is_file() else None
    if found != wanted:
        made = f"was made with {found}" if found else f"has no {SPEC_FILE} (made by generator version 1)"
        raise ValueError(
            f"{out} holds a synthetic dataset that {made}; the config asks for {wanted}. Delete {out} (it is "
            "recreated on the next run; the lab's 8,000 images take about 25 s) or point the config at another folder"
        )
    return out
