"""PoseDataset bad input: every broken entry raises naming id and path, or is skipped once with a warning."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from grpose.data.pose_dataset import DatasetEntryError, PoseDataset
from grpose.data.synthetic import make_synthetic_dataset


def _break(root: Path, entry: dict, kind: str) -> str:
    """Damage one entry's files (or the entry itself); returns the path or field the error must name."""
    if kind == "missing image":
        (root / entry["img_path"]).unlink()
        return entry["img_path"]
    if kind == "corrupt image":
        (root / entry["img_path"]).write_bytes(b"not a jpeg at all")
        return entry["img_path"]
    if kind == "truncated image":
        data = (root / entry["img_path"]).read_bytes()
        (root / entry["img_path"]).write_bytes(data[: len(data) // 2])
        return entry["img_path"]
    if kind == "missing pose":
        (root / entry["pose_path"]).unlink()
        return entry["pose_path"]
    if kind == "corrupt pose":
        (root / entry["pose_path"]).write_bytes(b"garbage")
        return entry["pose_path"]
    if kind == "wrong shape":
        np.savez(root / entry["pose_path"], arr_0=np.array([{"keypoints": np.zeros((16, 3))}], dtype=object))
        return entry["pose_path"]
    if kind == "not an array":
        np.savez(root / entry["pose_path"], arr_0=np.array([{"keypoints": "abc"}], dtype=object))
        return entry["pose_path"]
    if kind == "missing field":
        del entry["pose_path"]
        return "pose_path"
    raise AssertionError(kind)


KINDS = [
    "missing image",
    "corrupt image",
    "missing pose",
    "corrupt pose",
    "wrong shape",
    "not an array",
    "missing field",
]


@pytest.fixture
def broken(tmp_path, request):
    """A 4-entry synthetic training split whose entry 1 is broken in the requested way."""
    summary = make_synthetic_dataset(tmp_path, 5, seed=1, val_fraction=0.2)
    mapping_file = Path(summary["mapping_training"])
    mapping = json.loads(mapping_file.read_text())
    ids = list(mapping)
    named = _break(tmp_path, mapping[ids[1]], request.param)
    mapping_file.write_text(json.dumps(mapping))
    return mapping_file, ids, named


@pytest.mark.parametrize("broken", KINDS, indirect=True)
def test_raise_names_entry_and_path(broken):
    mapping_file, ids, named = broken
    ds = PoseDataset(mapping_file, image_size=32, on_error="raise", train=False)
    ds[0]
    with pytest.raises(DatasetEntryError) as info:
        ds[1]
    assert ids[1] in str(info.value) and named in str(info.value)
    assert info.value.entry_id == ids[1]


@pytest.mark.parametrize("broken", KINDS, indirect=True)
def test_skip_serves_next_and_warns_once(broken, caplog):
    mapping_file, ids, named = broken
    ds = PoseDataset(mapping_file, image_size=32, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="grpose.data.pose_dataset"):
        assert ds[1]["id"] == ids[2]
        assert ds[1]["id"] == ids[2]
    warnings = [r.getMessage() for r in caplog.records if ids[1] in r.getMessage()]
    assert len(warnings) == 1 and named in warnings[0]
    assert ds.num_skipped == 1 and ds.skipped_ids() == [ids[1]]
    assert ds.report_skipped() == 1


@pytest.mark.parametrize("broken", ["missing image"], indirect=True)
def test_default_policy_follows_train(broken):
    mapping_file, ids, _ = broken
    assert PoseDataset(mapping_file, image_size=32, train=True)[1]["id"] == ids[2]
    with pytest.raises(DatasetEntryError, match=ids[1]):
        PoseDataset(mapping_file, image_size=32, train=False)[1]


def test_last_entry_wraps_and_all_bad_raises(tmp_path):
    summary = make_synthetic_dataset(tmp_path, 4, seed=2, val_fraction=0.25)
    mapping = json.loads(Path(summary["mapping_training"]).read_text())
    ids = list(mapping)
    (tmp_path / mapping[ids[-1]]["img_path"]).unlink()
    ds = PoseDataset(summary["mapping_training"], image_size=32)
    assert ds[len(ds) - 1]["id"] == ids[0]  # wraps around instead of running off the end
    for entry in mapping.values():
        (tmp_path / entry["pose_path"]).unlink(missing_ok=True)
    ds = PoseDataset(summary["mapping_training"], image_size=32)
    with pytest.raises(RuntimeError, match="every entry"):
        ds[0]
    assert ds.num_skipped == len(ids)
    with pytest.raises(RuntimeError, match="every entry"):  # known-bad entries are not retried forever either
        ds[2]
