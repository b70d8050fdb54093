"""python -m grpose.bench --smoke: every section runs once on CPU and reports positive numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpose.bench import runner


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@pytest.mark.slow
def test_benchmark_smoke_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = runner.main(["--suite", "cpu", "--smoke", "--out", str(out)])
    written = json.loads(out.read_text())
    assert set(written) >= {"machine", *runner.SECTIONS}
    assert written["machine"]["threads"] >= 1 and written["machine"]["torch"]
    assert written["machine"]["cpu"]
    train = written["train"]["cpu"]
    assert {(r["pose_loss"], r["checkpointing"]) for r in train} == {(False, False), (True, True)}
    for row in train:
        assert "error" not in row, row
        for key in ("step_s", "samples_per_s", "peak_memory_gib", "step_flops", "achieved_tflops"):
            assert _positive(row[key]), (key, row)
    # the pose loss adds the VAE decoder and the pose network to the step
    assert train[1]["step_flops"] > train[0]["step_flops"]
    for row in written["sample"]["cpu"]:
        for key in ("images_per_s", "run_s", "peak_memory_gib"):
            assert _positive(row[key]), (key, row)
    pose = written["pose"]["cpu"]
    assert _positive(pose["network_images_per_s"]) and _positive(pose["grouping_ms_per_image"])
    for row in written["graph"]["cpu"]:
        for key in ("ours_s", "naive_s", "ours_peak_mib", "naive_peak_mib"):
            assert _positive(row[key]), (key, row)
        assert row["max_abs_diff"] < 1e-4
    assert _positive(written["data"]["cpu"]["samples_per_s"])
    estimate = written["eval"]["cpu"]
    assert "TINY" in estimate["model"] and estimate["images"] == 4750 and _positive(estimate["total_h"])
    assert result["eval"]["cpu"]["total_h"] == pytest.approx(estimate["total_h"])


def test_benchmark_rejects_unknown_sections() -> None:
    with pytest.raises(SystemExit):
        runner.main(["--suite", "cpu", "--sections", "train,bogus"])
