"""PoseDataset: Human-Art / LAION-Human samples (image, rendered skeleton, pose, caption) in the HumanSD format."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from grpose.data.transforms import clean_pose, crop_geometry, flip_image, resize_and_crop
from grpose.pose.skeleton import render_skeleton, to_unit_range

log = logging.getLogger(__name__)

MAPPING_FIELDS = ("img_path", "prompt", "pose_path")


class DatasetEntryError(RuntimeError):
    """One mapping entry cannot be loaded; the message names the entry id and the offending path or field."""

    def __init__(self, entry_id: str, message: str) -> None:
        super().__init__(f"dataset entry {entry_id!r}: {message}")
        self.entry_id = entry_id


def load_mapping(mapping_file: str | Path) -> dict[str, Any]:
    """Read a mapping JSON ``{id: {img_path, prompt, pose_path}}``; errors name the file."""
    path = Path(mapping_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"mapping file not found: {path} (create a synthetic one with scripts/make_synthetic_dataset.py)"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            mapping = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read mapping file {path}: {err}") from err
    if not isinstance(mapping, dict):
        raise ValueError(f"mapping file {path} must hold a JSON object {{id: {{img_path, prompt, pose_path}}}}")
    return mapping


def read_entry_fields(entry_id: str, entry: Any) -> tuple[str, str, str]:
    """(img_path, prompt, pose_path) of a mapping entry, or a DatasetEntryError naming the missing field."""
    if not isinstance(entry, dict):
        raise DatasetEntryError(entry_id, f"expected an object with {list(MAPPING_FIELDS)}, got {type(entry).__name__}")
    missing = [f for f in MAPPING_FIELDS if f not in entry]
    if missing:
        raise DatasetEntryError(entry_id, f"missing field(s) {missing} (has {sorted(entry)})")
    img_path, prompt, pose_path = (entry[f] for f in MAPPING_FIELDS)
    if not isinstance(img_path, str) or not isinstance(pose_path, str) or not isinstance(prompt, str):
        raise DatasetEntryError(entry_id, "img_path, prompt and pose_path must be strings")
    return img_path, prompt, pose_path


def read_image(entry_id: str, path: Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) BGR, or raise a DatasetEntryError naming the path."""
    if not path.is_file():
        raise DatasetEntryError(entry_id, f"image file not found: {path}")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DatasetEntryError(entry_id, f"cannot read image file {path}: {err}") from err
    # imdecode gives the same pixels as imread but rejects truncated JPEGs (imread pads them with grey)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.size == 0:
        raise DatasetEntryError(entry_id, f"cannot decode image file (corrupt, truncated or not an image): {path}")
    return image


def read_pose(entry_id: str, path: Path, keypoint_num: int = 17) -> list[np.ndarray]:
    """People of a HumanSD pose file (``np.load(path, allow_pickle=True)["arr_0"]``), each (keypoint_num, 3)."""
    if not path.is_file():
        raise DatasetEntryError(entry_id, f"pose file not found: {path}")
    try:
        with np.load(path, allow_pickle=True) as archive:
            people = archive["arr_0"]
    except Exception as err:  # zipfile/pickle/KeyError/ValueError: all mean an unreadable pose file
        raise DatasetEntryError(entry_id, f"cannot read pose file {path}: {type(err).__name__}: {err}") from err
    if getattr(people, "ndim", 1) == 0:
        raise DatasetEntryError(entry_id, f"pose file {path}: arr_0 must be a sequence of people, got a scalar")
    result = []
    for p, person in enumerate(people):
        keypoints = person.get("keypoints") if isinstance(person, dict) else person
        try:
            keypoints = np.asarray(keypoints, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DatasetEntryError(entry_id, f"pose file {path}: person {p} keypoints not numeric ({err})") from err
        if keypoints.shape != (keypoint_num, 3):
            raise DatasetEntryError(
                entry_id,
                f"pose file {path}: person {p} keypoints have shape {keypoints.shape}, expected ({keypoint_num}, 3)",
            )
        result.append(keypoints)
    return result


def scene_of(img_path: str) -> str:
    """The scene folder of an image path: the component after ``images/`` (else the parent folder name)."""
    parts = Path(img_path).parts
    if "images" in parts[:-1]:
        return parts[parts.index("images") + 1] if parts.index("images") + 1 < len(parts) - 1 else ""
    return Path(img_path).parent.name


class PoseDataset(Dataset):
    """Human-Art / LAION-Human as prepared by HumanSD (released ``dataset_pose.py``, docs/release_behaviours.md §2).

    Each sample: ``jpg`` float32 (S, S, 3) RGB in [-1, 1]; ``hint`` the rendered skeleton float32 (S, S, 3) in
    [-1, 1]; ``pose`` float32 (max_person_num, 17, 3) in crop pixels, missing = (-1, -1, 0); ``txt`` (dropped to
    "" with probability ``caption_dropout`` when training); ``img_path``; ``id`` (the mapping key); ``scene``.
    Training crops randomly, evaluation crops the centre (deterministic). Bad entries (``on_error`` defaults to
    'skip' when training, 'raise' when evaluating): 'raise' raises a DatasetEntryError naming the id and path;
    'skip' warns once per bad entry, serves the next valid entry instead and counts distinct bad entries in
    ``num_skipped`` (shared with DataLoader workers). ``mapping``: the mapping file's content, when the caller has
    read it already (the evaluation reads it once for all its processes).
    """

    def __init__(
        self,
        mapping_file: str | Path,
        base_dir: str | Path | None = None,
        image_size: int = 512,
        max_person_num: int = 10,
        keypoint_num: int = 17,
        keypoint_thresh: float = 0.02,
        train: bool = True,
        caption_dropout: float = 0.5,
        random_flip: bool = False,
        on_error: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        mapping: dict[str, Any] | None = None,
    ) -> None:
        if on_error is None:
            on_error = "skip" if train else "raise"  # skip when training, raise when evaluating (Q14)
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        self.mapping_file = Path(mapping_file)
        self.base_dir = Path(base_dir) if base_dir is not None else self.mapping_file.parent
        mapping = load_mapping(self.mapping_file) if mapping is None else mapping  # given: already read
        self.ids: list[str] = list(mapping)[:limit] if limit is not None else list(mapping)
        if not self.ids:
            raise ValueError(f"mapping file {self.mapping_file} has no entries")
        self.entries = [mapping[i] for i in self.ids]
        self.image_size = int(image_size)
        self.max_person_num = int(max_person_num)
        self.keypoint_num = int(keypoint_num)
        self.keypoint_thresh = float(keypoint_thresh)
        self.train = bool(train)
        self.caption_dropout = float(caption_dropout)
        self.random_flip = bool(random_flip)
        self.on_error = on_error
        self.seed = int(seed)
        # one flag per entry in shared memory: DataLoader workers mark bad entries, the main process counts them
        self._bad = torch.zeros(len(self.ids), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.ids)

    def sample_rng(self) -> np.random.Generator:
        """Augmentation RNG of one training sample, seeded from torch's global RNG (and ``seed``).

        Drawing from torch's RNG keeps augmentation reproducible wherever torch's RNG is: DataLoader workers
        are seeded from it, and a resumed run restores it, so crops and caption dropout match an uninterrupted run.
        """
        return np.random.default_rng([self.seed, int(torch.randint(0, 2**62, ()).item())])

    @property
    def num_skipped(self) -> int:
        """Number of distinct entries found bad and skipped so far (all workers)."""
        return int(self._bad.sum())

    def skipped_ids(self) -> list[str]:
        """Ids of the entries found bad so far."""
        return [self.ids[i] for i in torch.nonzero(self._bad).flatten().tolist()]

    def report_skipped(self) -> int:
        """Log how many entries were skipped (and which, up to 20); returns the count."""
        ids = self.skipped_ids()
        if ids:
            shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
            log.warning(
                "%s: %d bad entr%s skipped: %s", self.mapping_file, len(ids), "y" if len(ids) == 1 else "ies", shown
            )
        return len(ids)

    def resolve(self, relative: str) -> Path:
        """A mapping path resolved against ``base_dir`` (absolute paths are kept)."""
        path = Path(relative)
        return path if path.is_absolute() else self.base_dir / path

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_error == "raise":
            return self.load(index)
        n = len(self.ids)
        for attempt in range(n):
            i = (index + attempt) % n
            if self._bad[i]:  # known bad (warned already, possibly by another worker)
                continue
            try:
                return self.load(i)
            except DatasetEntryError as err:
                if not self._bad[i]:
                    self._bad[i] = 1
                    log.warning("skipping bad dataset entry (served the next valid one instead): %s", err)
        raise RuntimeError(f"every entry of {self.mapping_file} failed to load ({n} entries); see the warnings above")

    def load(self, index: int) -> dict[str, Any]:
        """Load entry ``index`` or raise a DatasetEntryError naming its id and path (no skipping)."""
        entry_id = self.ids[index]
        img_path, prompt, pose_path = read_entry_fields(entry_id, self.entries[index])
        image = read_image(entry_id, self.resolve(img_path))  # (H, W, 3) BGR uint8
        people = read_pose(entry_id, self.resolve(pose_path), self.keypoint_num)
        height, width = image.shape[:2]
        size = self.image_size
        rng = self.sample_rng() if self.train else None
        geometry = crop_geometry(height, width, size, rng)
        flip = self.train and self.random_flip and bool(rng.random() < 0.5)
        crop = resize_and_crop(image, geometry)
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        if flip:
            crop = flip_image(crop)
        pose = clean_pose(
            people, height, width, geometry, self.max_person_num, self.keypoint_num, self.keypoint_thresh, flip
        )
        hint = render_skeleton(pose, size, size, threshold=self.keypoint_thresh)
        txt = prompt
        if self.train and self.caption_dropout > 0 and rng.random() < self.caption_dropout:
            txt = ""
        return {
            "jpg": to_unit_range(crop),
            "hint": to_unit_range(hint),
            "txt": txt,
            "pose": pose,
            "img_path": img_path,
            "id": entry_id,
            "scene": scene_of(img_path),
        }
