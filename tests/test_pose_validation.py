"""Pose metrics while training (docs/metrics.md §9): logged at the right steps, identical for 1 and 2 processes."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_training import TINY, _subprocess_env, data_overrides, run_train, synthetic  # noqa: F401  (fixture)

POSE_VALIDATION = """
pose_validation:
  num_images: 4
  seed: 5
  ddim_steps: 2
  guidance_scale: 3.0
  batch_size: 2
  pose_estimator:
    target: grpose.pose.estimator.BottomUpPoseEstimator
    params: {arch: higherhrnet_w18_small, checkpoint: null, allow_random_init: true, input_size: 64}
"""


def validation_overrides(root) -> list[str]:
    return [
        f"data.params.validation.params.mapping_file={root}/mapping_file_validation.json",
        f"data.params.validation.params.base_dir={root}",
    ]


def logged_rows(run_dir) -> dict[int, dict[str, str]]:
    with open(run_dir / "logs/metrics.csv") as fh:
        return {int(r["step"]): r for r in csv.DictReader(fh) if r.get("val_pose/ap")}


@pytest.mark.slow
def test_pose_metrics_are_logged_every_n_steps_with_grids(tmp_path, synthetic):  # noqa: F811
    extra = tmp_path / "pose_validation.yaml"
    extra.write_text(POSE_VALIDATION)
    run_train(tmp_path, synthetic, "--config", str(extra), TINY, "--max_steps", "4", "--name", "val",
              "trainer.val_every_n_steps=2", *validation_overrides(synthetic))  # fmt: skip
    run_dir = tmp_path / "exp/grpose/val"
    rows = logged_rows(run_dir)
    assert sorted(rows) == [2, 4]
    for row in rows.values():
        for key in ("ap", "ap50", "cap", "pce", "ap_released", "pce_released"):
            assert row[f"val_pose/{key}"] != "" and np.isfinite(float(row[f"val_pose/{key}"]))
    assert (run_dir / "pose_validation/step_0000002.png").is_file()
    with np.load(run_dir / "pose_validation/step_0000004.npz") as data:
        assert data["images"].shape == (4, 64, 64, 3) and data["images"].dtype == np.uint8


@pytest.mark.slow
def test_one_and_two_processes_log_the_same_pose_metrics(tmp_path, synthetic):  # noqa: F811
    """Learning rate 0 keeps the weights equal in both runs, so only the sharding could make them differ."""
    extra = tmp_path / "pose_validation.yaml"
    extra.write_text(POSE_VALIDATION)
    results = {}
    for devices in (1, 2):
        name = f"dev{devices}"
        cmd = [sys.executable, "-m", "train", "--config", str(extra), TINY, "--outdir", str(tmp_path / "exp"),
               "--accelerator", "cpu", "--devices", str(devices), "--strategy", "ddp", "--max_steps", "2",
               "--name", name, "-s", "7", "model.params.learning_rate=0.0", "trainer.val_every_n_steps=2",
               *data_overrides(synthetic), *validation_overrides(synthetic)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = tmp_path / "exp/grpose" / name
        with np.load(run_dir / "pose_validation/step_0000002.npz") as data:
            results[devices] = (logged_rows(run_dir)[2], data["ids"].tolist(), data["images"].copy())
    (row1, ids1, images1), (row2, ids2, images2) = results[1], results[2]
    assert ids1 == ids2 and len(ids1) == 4
    assert np.array_equal(images1, images2)
    assert {k: v for k, v in row1.items() if k.startswith("val_pose/")} == {
        k: v for k, v in row2.items() if k.startswith("val_pose/")
    }


@pytest.mark.slow
def test_pose_validation_does_not_change_the_training_trajectory(tmp_path, synthetic):  # noqa: F811
    """Turning pose validation on must not move the weights: it builds an estimator, samples, detects and scores
    between steps, and any draw from the global RNGs would change the next batches' noise, timesteps and crops.
    The estimator loads a checkpoint (the lab's), as real runs do: building it once drew its discarded initial
    weights from the global RNG, and a lab run with validation every 250 steps ended with other weights."""
    from test_training import ROOT, adapter_weights

    lab_estimator = (
        "{arch: mobilenetv2_lab, width_mult: 0.5, head_channels: 64, input_size: 64, "
        f"checkpoint: {ROOT}/models/lab/pose_estimator.safetensors}}"
    )
    extra = tmp_path / "pose_validation.yaml"
    extra.write_text(POSE_VALIDATION.split("    params:")[0] + f"    params: {lab_estimator}\n")
    weights = {}
    for every in (0, 2):
        name = f"val{every}"
        run_train(tmp_path, synthetic, "--config", str(extra), TINY, "--max_steps", "4", "--name", name,
                  f"trainer.val_every_n_steps={every}", *validation_overrides(synthetic))  # fmt: skip
        weights[every] = adapter_weights(tmp_path / f"exp/grpose/{name}/checkpoints/last.ckpt")
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
