"""PoseDataModule: the LightningDataModule built from the config's ``data:`` section (train/validation/test)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from grpose.config import ConfigError, instantiate, to_container
from grpose.data.pose_dataset import PoseDataset

log = logging.getLogger(__name__)

STRING_KEYS = ("txt", "img_path", "id", "scene")


def collate_pose_batch(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack arrays/numbers into tensors (B, ...) and keep strings (txt, img_path, id, scene) as lists."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if key in STRING_KEYS or isinstance(first, str):
            batch[key] = list(values)
        elif isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, int | float | bool | np.number):
            batch[key] = torch.as_tensor(values)
        else:
            batch[key] = list(values)
    return batch


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: one OpenCV thread per worker (augmentation draws from the worker's torch RNG)."""
    cv2.setNumThreads(1)


def build_dataset(node: Any, name: str) -> Dataset:
    """A dataset from a ``{target, params}`` node, a dict of PoseDataset keyword arguments, or a Dataset."""
    if isinstance(node, Dataset):
        return node
    node = to_container(node)
    if not isinstance(node, dict):
        raise ConfigError(
            f"data.params.{name} must be a {{target, params}} node or PoseDataset arguments, got {node!r}"
        )
    if "target" in node:
        return instantiate(node, f"data.params.{name}")
    try:
        return PoseDataset(**node)
    except TypeError as err:
        raise ConfigError(f"data.params.{name}: bad PoseDataset arguments: {err}") from err


class PoseDataModule(L.LightningDataModule):
    """Train/validation/test loaders over PoseDatasets (docs/design.md §3).

    Honours ``batch_size``, ``num_workers``, ``persistent_workers`` (only with workers), ``pin_memory``;
    training shuffles and drops the last partial batch (``drop_last_train``); evaluation loaders keep
    their order and never drop samples.
    """

    def __init__(
        self,
        train: Any = None,
        validation: Any = None,
        test: Any = None,
        batch_size: int = 4,
        num_workers: int = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        shuffle: bool = True,
        drop_last_train: bool = True,
    ) -> None:
        super().__init__()
        self.train_config, self.validation_config, self.test_config = train, validation, test
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.persistent_workers = bool(persistent_workers)
        self.pin_memory = bool(pin_memory)
        self.shuffle = bool(shuffle)
        self.drop_last_train = bool(drop_last_train)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets needed for ``stage`` (once each)."""
        if stage in (None, "fit") and self.train_dataset is None and self.train_config is not None:
            self.train_dataset = build_dataset(self.train_config, "train")
        # The validation set is built when a validation loader is asked for, not for every fit (train.py runs none).
        if stage in (None, "validate") and self.val_dataset is None and self.validation_config is not None:
            self.val_dataset = build_dataset(self.validation_config, "validation")
        if stage in (None, "test", "predict") and self.test_dataset is None and self.test_config is not None:
            self.test_dataset = build_dataset(self.test_config, "test")

    def _loader(self, dataset: Dataset | None, name: str, shuffle: bool, drop_last: bool) -> DataLoader:
        if dataset is None:
            raise ConfigError(f"data.params.{name} is not configured; add a dataset node for it")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate_pose_batch,
            worker_init_fn=seed_worker,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_dataset, "train", self.shuffle, self.drop_last_train)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_dataset, "validation", False, False)

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._loader(self.test_dataset, "test", False, False)

    def skipped_counts(self) -> dict[str, int]:
        """Bad entries skipped so far per split (datasets without a ``num_skipped`` count are left out)."""
        counts = {}
        for name, ds in (("train", self.train_dataset), ("validation", self.val_dataset), ("test", self.test_dataset)):
            if ds is not None and hasattr(ds, "num_skipped"):
                counts[name] = int(ds.num_skipped)
        return counts
