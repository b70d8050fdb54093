"""The lab domain: procedural people (grpose.data.synthetic) as in-memory arrays of the crops GRPose trains on."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grpose.data.pose_dataset import PoseDataset
from grpose.data.synthetic import SPEC_FILE, ensure_synthetic_dataset

log = logging.getLogger(__name__)


def ensure_lab_dataset(
    out_dir: str | Path, num_images: int, seed: int, image_size: tuple[int, int], val_fraction: float
) -> Path:
    """Create the lab dataset (HumanSD on-disk format) once (``ensure_synthetic_dataset``: a folder made with
    other settings or by another generator version is refused: the lab's numbers and weights refer to one exact
    dataset)."""
    return ensure_synthetic_dataset(out_dir, num_images, seed=seed, image_size=tuple(image_size),
                                    val_fraction=val_fraction)  # fmt: skip


@dataclass
class LabArrays:
    """One split as arrays: ``images`` uint8 (N, S, S, 3) RGB centre crops, ``poses`` float32 (N, P, 17, 3) in
    crop pixels (missing joints (-1, -1, 0)), ``prompts`` and ``ids`` (mapping keys, map-file order)."""

    images: np.ndarray
    poses: np.ndarray
    prompts: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def load_lab_arrays(mapping_file: str | Path, base_dir: str | Path, image_size: int) -> LabArrays:
    """Centre crops exactly as ``PoseDataset(train=False)`` serves them; cached next to the mapping file."""
    mapping_file = Path(mapping_file)
    record = mapping_file.with_name(SPEC_FILE)  # the same mapping file from another generator version differs here
    digest = hashlib.sha1(mapping_file.read_bytes() + (record.read_bytes() if record.is_file() else b"")).hexdigest()
    digest = digest[:10]
    cache = mapping_file.with_name(f"{mapping_file.stem}.{image_size}px.{digest}.npz")
    if cache.is_file():
        with np.load(cache) as data:
            return LabArrays(data["images"], data["poses"], data["prompts"].tolist(), data["ids"].tolist())
    dataset = PoseDataset(mapping_file, base_dir=base_dir, image_size=image_size, train=False, caption_dropout=0.0)
    images, poses, prompts = [], [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        images.append(np.round((sample["jpg"] + 1.0) * 127.5).astype(np.uint8))  # exact inverse of to_unit_range
        poses.append(sample["pose"])
        prompts.append(sample["txt"])
    arrays = LabArrays(np.stack(images), np.stack(poses).astype(np.float32), prompts, list(dataset.ids))
    np.savez(cache, images=arrays.images, poses=arrays.poses, prompts=np.array(prompts), ids=np.array(arrays.ids))
    return arrays
