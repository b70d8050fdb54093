"""Data CLIs: make_synthetic_dataset, check_dataset (finds exactly the broken entries); the data benchmark."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np

from grpose.bench.data import benchmark_dataset, make_benchmark_images

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bad_ids(output: str) -> set[str]:
    return set(re.findall(r"^BAD (\S+):", output, flags=re.MULTILINE))


def test_make_and_check_clean_dataset(tmp_path, capsys):
    assert _script("make_synthetic_dataset").main(["--out", str(tmp_path), "--num", "8", "--seed", "5"]) == 0
    assert (tmp_path / "mapping_file_training.json").is_file()
    check = _script("check_dataset")
    capsys.readouterr()
    for split in ("training", "validation"):
        assert check.main([str(tmp_path / f"mapping_file_{split}.json"), "--base", str(tmp_path)]) == 0
        output = capsys.readouterr().out
        assert not _bad_ids(output) and "0 with problems" in output and "people per image" in output


def test_check_lists_exactly_the_broken_entries(tmp_path, capsys):
    _script("make_synthetic_dataset").main(["--out", str(tmp_path), "--num", "12", "--val_fraction", "0"])
    mapping_file = tmp_path / "mapping_file_training.json"
    mapping = json.loads(mapping_file.read_text())
    ids = list(mapping)
    (tmp_path / mapping[ids[0]]["img_path"]).unlink()  # missing image
    (tmp_path / mapping[ids[2]]["img_path"]).write_bytes(b"\x00" * 100)  # corrupt image
    data = (tmp_path / mapping[ids[3]]["img_path"]).read_bytes()
    (tmp_path / mapping[ids[3]]["img_path"]).write_bytes(data[: len(data) // 2])  # truncated JPEG
    (tmp_path / mapping[ids[5]]["pose_path"]).unlink()  # missing pose file
    np.savez(tmp_path / mapping[ids[7]]["pose_path"], arr_0=np.zeros((2, 17, 2)))  # malformed pose
    mapping[ids[8]]["prompt"] = "  "  # empty prompt
    del mapping[ids[10]]["img_path"]  # entry without a field
    mapping_file.write_text(json.dumps(mapping))
    capsys.readouterr()
    status = _script("check_dataset").main([str(mapping_file), "--base", str(tmp_path)])
    output = capsys.readouterr().out
    assert status == 1
    assert _bad_ids(output) == {ids[i] for i in (0, 2, 3, 5, 7, 8, 10)}
    for kind in ("missing image", "corrupt image", "missing pose file", "malformed pose file", "empty prompt"):
        assert kind in output
    assert "12 entries, 5 clean, 7 with problems" in output


def test_check_missing_mapping(tmp_path, capsys):
    assert _script("check_dataset").main([str(tmp_path / "none.json")]) == 1
    assert "none.json" in capsys.readouterr().out


def test_benchmark_function(tmp_path):
    mapping = make_benchmark_images(tmp_path, num_images=1)
    results = benchmark_dataset(mapping, tmp_path, image_size=64, num_samples=3, warmup=1)
    assert results["samples_per_s"] > 0 and results["num_samples"] == 3 and results["image_size"] == 64
    assert results["source_sizes_hw"] == [[1500, 1000]]
