"""Exponential moving average of the trainable weights (docs/design.md §7): update rule, swap, resume, --use_ema."""

from __future__ import annotations

import pytest
import torch
from test_training import run_train, synthetic  # noqa: F401  (the fixture)
from torch import nn

from grpose.checkpoint import CheckpointError, read_state_dict
from grpose.ema import ExponentialMovingAverage


def test_update_follows_the_warmed_up_decay_and_copies_buffers():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ExponentialMovingAverage({"m.": module}, decay=0.9)
    start = module[0].weight.detach().clone()
    with torch.no_grad():
        module[0].weight.add_(1.0)
        module[1].running_mean.fill_(5.0)
    ema.update()
    d = min(0.9, 2 / 11)  # first update: (1 + 1) / (10 + 1)
    torch.testing.assert_close(ema.shadow["m.0.weight"], d * start + (1 - d) * (start + 1.0), rtol=0, atol=1e-6)
    assert torch.equal(ema.shadow["m.1.running_mean"], torch.full((2,), 5.0))
    for _ in range(200):
        ema.update()
    assert ema.current_decay() == 0.9


def test_applied_swaps_the_average_in_and_the_weights_back():
    module = nn.Linear(2, 2)
    ema = ExponentialMovingAverage({"": module}, decay=0.5)
    trained = {k: v.clone() for k, v in module.state_dict().items()}
    ema.shadow = {k: torch.zeros_like(v) for k, v in ema.shadow.items()}
    with ema.applied():
        assert all(float(v.abs().sum()) == 0 for v in module.state_dict().values())
    assert all(torch.equal(trained[k], v) for k, v in module.state_dict().items())


def test_bad_decay_and_foreign_state_are_refused():
    with pytest.raises(ValueError, match="ema_decay"):
        ExponentialMovingAverage({"": nn.Linear(1, 1)}, decay=1.0)
    ema = ExponentialMovingAverage({"a.": nn.Linear(1, 1)}, decay=0.9)
    with pytest.raises(KeyError, match="does not fit"):
        ema.load_state_dict({"updates": 1, "shadow": {"b.weight": torch.zeros(1, 1)}})


@pytest.mark.slow
def test_ema_resume_is_bit_exact_and_use_ema_reads_the_average(tmp_path, synthetic):  # noqa: F811
    ema = "model.params.ema_decay=0.9"
    run_train(tmp_path / "a", synthetic, "--max_steps", "6", "--name", "full", ema)
    full = torch.load(tmp_path / "a/exp/grpose/full/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    run_train(tmp_path / "b", synthetic, "--max_steps", "3", "--name", "part", ema)
    last = tmp_path / "b/exp/grpose/part/checkpoints/last.ckpt"
    run_train(tmp_path / "b", synthetic, "--max_steps", "6", "--resume", str(last), ema)
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert full["ema"]["updates"] == resumed["ema"]["updates"] == 6
    shadow = full["ema"]["shadow"]
    assert shadow.keys() == {k for k in full["state_dict"] if k.startswith("control_model.")}
    assert all(torch.equal(v, resumed["ema"]["shadow"][k]) for k, v in shadow.items())
    assert any(not torch.equal(v, full["state_dict"][k]) for k, v in shadow.items())  # an average, not a copy
    # --use_ema: the average replaces the trained weights; a checkpoint trained without one is refused
    averaged = read_state_dict(tmp_path / "a/exp/grpose/full/checkpoints/last.ckpt", use_ema=True)
    assert all(torch.equal(averaged[k], v) for k, v in shadow.items())
    run_train(tmp_path / "c", synthetic, "--max_steps", "1", "--name", "plain")
    with pytest.raises(CheckpointError, match="ema_decay"):
        read_state_dict(tmp_path / "c/exp/grpose/plain/checkpoints/last.ckpt", use_ema=True)
    with pytest.raises(SystemExit, match="ema_decay"):
        run_train(tmp_path / "d", synthetic, "--max_steps", "1", "--use_ema")
