"""Synthetic dataset: HumanSD on-disk format, determinism, round trip through PoseDataset and the DataModule."""

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from grpose.data.datamodule import PoseDataModule, collate_pose_batch
from grpose.data.pose_dataset import PoseDataset
from grpose.data.synthetic import ensure_synthetic_dataset, make_synthetic_dataset
from grpose.pose.skeleton import hint_from_pose


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, make_synthetic_dataset(root, 16, seed=3)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_on_disk_format(synthetic):
    root, summary = synthetic
    assert summary["num_training"] == 12 and summary["num_validation"] == 4
    training = json.loads((root / "mapping_file_training.json").read_text())
    validation = json.loads((root / "mapping_file_validation.json").read_text())
    assert not set(training) & set(validation)
    scenes, sizes, people = set(), set(), []
    for entry_id, entry in {**training, **validation}.items():
        assert set(entry) == {"img_path", "prompt", "pose_path"} and entry["prompt"]
        scene = Path(entry["img_path"]).parts[1]
        scenes.add(scene)
        assert entry["img_path"] == f"images/{scene}/{entry_id.split('_')[-1]}.jpg"
        assert entry["pose_path"] == f"pose/{scene}/{entry_id.split('_')[-1]}.npz"
        arr = np.load(root / entry["pose_path"], allow_pickle=True)["arr_0"]
        assert arr.dtype == object and 1 <= len(arr) <= 3
        people.append(len(arr))
        for person in arr:
            assert isinstance(person, dict) and person["keypoints"].shape == (17, 3)
        image = cv2.imread(str(root / entry["img_path"]))
        sizes.add(image.shape)
        assert 70 <= image.shape[1] <= 170 and image.shape[2] == 3
    assert scenes == {"cartoon", "oil_painting", "dance"} and len(set(people)) > 1
    assert len(sizes) > 8 and any(h > w for h, w, _ in sizes) and any(h < w for h, w, _ in sizes)


def test_deterministic(tmp_path):
    make_synthetic_dataset(tmp_path / "a", 6, seed=7)
    make_synthetic_dataset(tmp_path / "b", 6, seed=7)
    make_synthetic_dataset(tmp_path / "c", 6, seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert ensure_synthetic_dataset(tmp_path / "a", 6, seed=7) == tmp_path / "a"  # the same dataset: reused
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_a_folder_made_otherwise_or_by_an_older_generator_is_refused_untouched(tmp_path):
    out = tmp_path / "syn"
    make_synthetic_dataset(out, 6, seed=7)
    before = _digest(out)
    with pytest.raises(ValueError, match=r"(?s)syn.*'num_images': 6.*'num_images': 99.*Delete"):
        ensure_synthetic_dataset(out, 99, seed=7)
    assert _digest(out) == before  # refused, not rewritten
    record = out / "synthetic_dataset.json"
    spec = json.loads(record.read_text())
    record.write_text(json.dumps({**spec, "generator": 1}))
    with pytest.raises(ValueError, match=r"'generator': 1"):
        ensure_synthetic_dataset(out, 6, seed=7)
    record.unlink()  # folders made before the record existed are generator version 1
    with pytest.raises(ValueError, match=r"no synthetic_dataset\.json \(made by generator version 1\)"):
        ensure_synthetic_dataset(out, 6, seed=7)
    assert sorted(p.name for p in out.iterdir()) == ["images", "mapping_file_training.json",
                                                     "mapping_file_validation.json", "pose"]  # fmt: skip


def test_every_figure_faces_the_viewer_so_its_left_and_right_can_be_read_from_the_image():
    """The figures have no face and mirror-alike limbs: a back view would be a front view with swapped labels
    (docs/lab.md §1). Facing the viewer, a person's left shoulder, hip and eye are on the image's right."""
    from grpose.data.synthetic import _random_person

    rng = np.random.default_rng(0)
    for _ in range(500):
        xy = _random_person(rng, 150, 140)
        for left, right in ((5, 6), (11, 12), (1, 2), (3, 4)):
            assert xy[left, 0] > xy[right, 0]


def test_round_trip_through_dataset(synthetic, caplog):
    root, _ = synthetic
    with caplog.at_level(logging.WARNING):
        for split in ("training", "validation"):
            ds = PoseDataset(root / f"mapping_file_{split}.json", image_size=64, train=split == "training")
            for i in range(len(ds)):
                sample = ds[i]
                assert sample["id"] == ds.ids[i]
                assert sample["jpg"].shape == sample["hint"].shape == (64, 64, 3)
                np.testing.assert_array_equal(sample["hint"], hint_from_pose(sample["pose"], 64, 64))
                assert (sample["pose"][:, :, 2] > 0).any(axis=1).sum() >= 1
            assert ds.num_skipped == 0
    assert not caplog.records


def test_datamodule_batches(synthetic):
    root, _ = synthetic
    common = {"base_dir": str(root), "image_size": 32}
    dm = PoseDataModule(
        train={"mapping_file": str(root / "mapping_file_training.json"), **common},
        validation={
            "target": "grpose.data.pose_dataset.PoseDataset",
            "params": {"mapping_file": str(root / "mapping_file_validation.json"), "train": False, **common},
        },
        batch_size=5,
    )
    dm.setup("fit")
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == 2  # 12 samples, batch 5, last partial batch dropped
    batch = train_batches[0]
    assert batch["jpg"].shape == (5, 32, 32, 3) and batch["jpg"].dtype == torch.float32
    assert batch["hint"].shape == (5, 32, 32, 3) and batch["pose"].shape == (5, 10, 17, 3)
    for key in ("txt", "img_path", "id", "scene"):
        assert isinstance(batch[key], list) and len(batch[key]) == 5
    val_batches = list(dm.val_dataloader())
    assert [len(b["id"]) for b in val_batches] == [4]  # evaluation keeps the partial batch, in order
    assert val_batches[0]["id"] == dm.val_dataset.ids
    assert dm.skipped_counts() == {"train": 0, "validation": 0}
    with pytest.raises(Exception, match="test"):
        dm.test_dataloader()


def test_workers_share_skip_count(tmp_path):
    summary = make_synthetic_dataset(tmp_path, 9, seed=4, val_fraction=0.0)
    mapping = json.loads(Path(summary["mapping_training"]).read_text())
    bad = list(mapping)[3]
    (tmp_path / mapping[bad]["img_path"]).unlink()
    dm = PoseDataModule(
        train={"mapping_file": summary["mapping_training"], "image_size": 32},
        batch_size=3,
        num_workers=2,
        shuffle=False,
        drop_last_train=False,
    )
    ids = [i for b in dm.train_dataloader() for i in b["id"]]
    assert len(ids) == 9 and bad not in ids
    assert dm.train_dataset.num_skipped == 1 and dm.train_dataset.skipped_ids() == [bad]


def test_collate_mixed_values():
    batch = collate_pose_batch([{"a": np.zeros(2), "txt": "x", "n": 1}, {"a": np.ones(2), "txt": "y", "n": 2}])
    assert batch["txt"] == ["x", "y"] and batch["a"].shape == (2, 2) and batch["n"].tolist() == [1, 2]


def test_person_masks_change_nothing_and_cover_each_persons_drawn_joints():
    from grpose.data.synthetic import draw_synthetic_image

    plain, people = draw_synthetic_image(np.random.default_rng(4), 120, 110, num_people=3)
    masks: list[np.ndarray] = []
    image, same_people = draw_synthetic_image(np.random.default_rng(4), 120, 110, num_people=3, masks=masks)
    assert np.array_equal(image, plain) and len(masks) == 3
    assert all(np.array_equal(a["keypoints"], b["keypoints"]) for a, b in zip(people, same_people))
    last = people[-1]["keypoints"]  # drawn last: nothing covers it, and its limbs end on its joints
    for j in (0, *range(5, 17)):
        x, y = np.round(last[j, :2]).astype(int)
        if 0 <= x < 110 and 0 <= y < 120 and last[j, 2] > 0:
            assert masks[-1][y, x] > 127, j
