"""Training on the tiny config: losses, gradient flow of the pose loss, resume, DDP, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from grpose.checkpoint import read_state_dict, save_state_dict
from grpose.config import instantiate, load_config
from grpose.data.synthetic import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/grpose/tiny.yaml")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(out, 16, seed=0)
    return out


def data_overrides(root: Path, limit: int = 6) -> list[str]:
    """Point the tiny config at a test dataset: ``limit`` training samples, so 3 steps per epoch at batch 2."""
    return [
        f"data.params.train.params.mapping_file={root}/mapping_file_training.json",
        f"data.params.train.params.base_dir={root}",
        f"data.params.train.params.limit={limit}",
        f"data.params.test.params.mapping_file={root}/mapping_file_validation.json",
        f"data.params.test.params.base_dir={root}",
        "data.params.num_workers=0",
        "synthetic_data=null",
        "trainer.progress_bar=false",
        "trainer.log_frequency=0",
    ]


def tiny_model(*overrides: str):
    """The tiny model with its frozen UNet's zero-initialised layers filled, as pretrained SD weights would be."""
    config = load_config(TINY, overrides=list(overrides))
    model = instantiate(config.model, "model")
    with torch.no_grad():
        for p in model.unet.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model, config


def tiny_batch(synthetic: Path, n: int = 2) -> dict:
    from grpose.data.pose_dataset import PoseDataset

    ds = PoseDataset(synthetic / "mapping_file_training.json", synthetic, image_size=64, train=True)
    samples = [ds[i] for i in range(n)]
    batch = {k: [s[k] for s in samples] for k in samples[0]}
    for key in ("jpg", "hint", "pose"):
        batch[key] = torch.stack([torch.as_tensor(v) for v in batch[key]])
    return batch


@pytest.mark.slow
def test_training_step_trains_only_the_adapter(synthetic):
    model, _ = tiny_model()
    model.train()
    terms = model.compute_losses(tiny_batch(synthetic))
    assert set(terms) == {"loss_simple"} and terms["loss_simple"].shape == (2,)
    terms["loss_simple"].mean().backward()
    adapter_grads = [p.grad for p in model.control_model.parameters() if p.grad is not None]
    assert adapter_grads and any(g.abs().sum() > 0 for g in adapter_grads)
    for part in (model.unet, model.first_stage_model, model.cond_stage_model):
        assert all(not p.requires_grad and p.grad is None for p in part.parameters())
        assert not part.training
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.control_model.parameters())


def test_unlocked_sd_trains_the_decoder_too():
    model, _ = tiny_model("model.params.sd_locked=false")
    trainable = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert all(id(p) in trainable for p in model.unet.output_blocks.parameters())
    assert not any(id(p) in trainable for p in model.unet.input_blocks.parameters())


@pytest.mark.slow
def test_pose_perception_loss_sends_gradient_to_the_adapter(synthetic):
    model, _ = tiny_model(
        "model.params.percept_loss_weight=0.5",
        "model.params.pose_feature_network={target: grpose.pose.features.PoseFeatureNetwork, "
        "params: {checkpoint: null, allow_random_init: true, width_mult: 0.25}}",
    )
    model.train()
    terms = model.compute_losses(tiny_batch(synthetic))
    assert terms["loss_pose"].shape == (2,) and torch.isfinite(terms["loss_pose"]).all()
    terms["loss_pose"].sum().backward()  # the pose term alone
    grads = {n: p.grad for n, p in model.control_model.named_parameters() if p.grad is not None}
    assert grads and sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert all(p.grad is None for p in model.pose_feature_network.parameters())
    assert not any(k.startswith(("pose_feature_network", "mmpose_model")) for k in model.state_dict())


def run_train(tmp_path: Path, synthetic: Path, *extra: str) -> int:
    argv = ["--config", TINY, "--outdir", str(tmp_path / "exp"), "--accelerator", "cpu", "-s", "7", *extra]
    argv += data_overrides(synthetic)
    return train.main(argv)


def adapter_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read_state_dict(ckpt).items() if k.startswith("control_model.")}


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "logs/metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_resume_after_step_3_equals_uninterrupted_6_steps(tmp_path, synthetic):
    """A run that crashed at step 5 and is resumed from its step-3 checkpoint ends with the uninterrupted run's
    weights and, row for row, its logs/metrics.csv (Lightning's CSVLogger would delete the file on a resume;
    grpose/csv_log.py keeps the rows the checkpoint covers and drops those the resumed run logs again)."""
    import shutil

    torch.use_deterministic_algorithms(True, warn_only=True)
    every_step = ["trainer.log_every_n_steps=1"]
    run_train(tmp_path / "a", synthetic, "--max_steps", "6", "--name", "full", *every_step)
    full = adapter_weights(tmp_path / "a/exp/grpose/full/checkpoints/last.ckpt")
    run_train(tmp_path / "b", synthetic, "--max_steps", "3", "--name", "part", *every_step)
    run_dir = tmp_path / "b/exp/grpose/part"
    last = run_dir / "checkpoints/last.ckpt"
    step3 = run_dir / "checkpoints/step3.ckpt"  # train.py takes the run folder from the checkpoint's place
    shutil.copy(last, step3)
    run_train(tmp_path / "b", synthetic, "--max_steps", "5", "--resume", str(last), *every_step)  # the "crash"
    assert {r["step"] for r in csv_rows(run_dir)} >= {"3", "4"}  # rows the resume from step 3 must not keep twice
    run_train(tmp_path / "b", synthetic, "--max_steps", "6", "--resume", str(step3), *every_step)
    resumed = adapter_weights(last)
    assert full.keys() == resumed.keys()
    worst = max((full[k].float() - resumed[k].float()).abs().max().item() for k in full)
    assert worst == 0.0, f"resumed adapter differs by {worst}"
    full_rows, resumed_rows = csv_rows(tmp_path / "a/exp/grpose/full"), csv_rows(run_dir)
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in full_rows] and len(full_rows) >= 12
    assert resumed_rows == full_rows
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert not any(k.startswith("pose_feature_network") for k in ckpt["state_dict"])
    assert (tmp_path / "a/exp/grpose/full/config.yaml").is_file()
    # Lightning's loader rebuilds the model from the checkpoint alone (the config stored with it) with its weights
    from grpose.model import GRPoseModel

    model = GRPoseModel.load_from_checkpoint(last, sample_steps=3)
    assert model.sample_steps == 3 and model.hparams.learning_rate == model.learning_rate
    assert all(torch.equal(v, ckpt["state_dict"][k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_resume_with_missing_file_or_other_config_fails_early(tmp_path, synthetic):
    with pytest.raises(SystemExit, match="checkpoint not found"):
        run_train(tmp_path, synthetic, "--resume", str(tmp_path / "nope.ckpt"))
    run_train(tmp_path, synthetic, "--max_steps", "1", "--name", "one")
    last = tmp_path / "exp/grpose/one/checkpoints/last.ckpt"
    with pytest.raises(SystemExit, match="different model config"):
        run_train(tmp_path, synthetic, "--resume", str(last), "model.params.alpha=2.0")


def test_control_ckpt_of_wrong_layout_lists_keys(tmp_path, synthetic):
    model, _ = tiny_model()
    state = model.state_dict()
    state.pop(next(k for k in state if k.startswith("control_model.")))
    state["control_model.bogus.weight"] = torch.zeros(1)
    bad = save_state_dict(state, tmp_path / "bad.ckpt")
    with pytest.raises(SystemExit, match=r"(?s)missing.*control_model.*unexpected.*control_model.bogus"):
        run_train(tmp_path, synthetic, "--max_steps", "1", "--control_ckpt", str(bad))


@pytest.mark.slow
def test_nonfinite_loss_stops_with_step_terms_and_images(tmp_path, synthetic):
    from grpose.model import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"(?s)step 0.*loss_simple.*images \[.*\.jpg"):
        run_train(tmp_path, synthetic, "--max_steps", "2", "model.params.scale_factor=.nan")


@pytest.mark.slow
def test_nonfinite_loss_can_skip_batches(tmp_path, synthetic):
    run_train(
        tmp_path, synthetic, "--max_steps", "2", "--max_epochs", "1", "--name", "skip",
        "model.params.scale_factor=.nan", "model.params.nonfinite_loss=skip",
    )  # fmt: skip
    ckpt = torch.load(tmp_path / "exp/grpose/skip/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    adapter = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("control_model.")}
    assert all(torch.isfinite(v.float()).all() for v in adapter.values())  # skipped batches left no NaN behind


DDP_DRIVER = """
import sys

import torch

sys.path.insert(0, {root!r})
import train
from grpose.model import GRPoseModel


def save_adapter(self):
    params = {{n: p.detach().cpu() for n, p in self.control_model.named_parameters()}}
    torch.save(params, {out!r} + f"/adapter_rank{{self.global_rank}}.pt")


GRPoseModel.on_train_end = save_adapter
sys.exit(train.main())
"""


def _checksum(params: dict[str, torch.Tensor]) -> float:
    return sum(float(v.double().sum()) for v in params.values())


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("GRPOSE_RUN_DIR", None)
    return env


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree_and_only_rank0_writes(tmp_path, synthetic):
    # train.py, with every rank saving its adapter weights at the end (Lightning's checkpoints are rank 0's only).
    driver = tmp_path / "train_saving_every_rank.py"
    driver.write_text(DDP_DRIVER.format(root=str(ROOT), out=str(tmp_path)))
    cmd = [sys.executable, str(driver), "--config", TINY, "--outdir", str(tmp_path / "exp"),
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--max_steps", "2", "--name", "ddp",
           *data_overrides(synthetic)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = [torch.load(path, map_location="cpu") for path in sorted(tmp_path.glob("adapter_rank*.pt"))]
    sums = [_checksum(params) for params in saved]
    assert len(sums) == 2 and sums[0] == sums[1], sums
    ckpt = adapter_weights(tmp_path / "exp/grpose/ddp/checkpoints/last.ckpt")  # rank 0's checkpoint agrees too
    assert _checksum({n: ckpt[f"control_model.{n}"] for n in saved[0]}) == sums[0]
    runs = list((tmp_path / "exp/grpose").iterdir())
    assert [r.name for r in runs] == ["ddp"], runs
    assert (runs[0] / "checkpoints/last.ckpt").is_file()
    assert not list(tmp_path.glob("lightning_logs"))


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_last_ckpt(tmp_path, synthetic):
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        TINY,
        "--outdir",
        str(tmp_path / "exp"),
        "--accelerator",
        "cpu",
        "--max_steps",
        "100000",
        "--name",
        "int",
        *data_overrides(synthetic),
        "trainer.log_frequency=1",
    ]  # fmt: skip  (an image grid after every step: a visible sign of progress)
    # Ctrl-C must reach the child even when this test runs in the background of a non-interactive shell, which
    # starts its jobs (and so their children) with SIGINT ignored
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    second_step = tmp_path / "exp/grpose/int/images/step_0000002.png"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not second_step.is_file():
        time.sleep(0.2)  # poll for the condition, not a fixed wait
    assert second_step.is_file(), "training did not reach step 2"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)  # drains the pipe: a child blocked on a full pipe never exits
    last = tmp_path / "exp/grpose/int/checkpoints/last.ckpt"
    assert last.is_file(), output.decode()[-3000:]
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert step >= 2  # saved at the interrupted step, after the two observed ones
    run_train(tmp_path, synthetic, "--resume", str(last), "--max_steps", str(step + 1))
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == step + 1


def test_train_creates_the_configured_synthetic_dataset(tmp_path):
    from omegaconf import OmegaConf

    config = OmegaConf.create({"synthetic_data": {"out": str(tmp_path / "syn"), "num": 6, "seed": 3}})
    train.ensure_synthetic_data(config)
    first = (tmp_path / "syn/mapping_file_training.json").read_text()
    assert (tmp_path / "syn/mapping_file_validation.json").is_file()
    train.ensure_synthetic_data(config)  # present: left as it is
    assert (tmp_path / "syn/mapping_file_training.json").read_text() == first
    config.synthetic_data.num = 7  # the folder holds another dataset: refused with the folder and what to do
    with pytest.raises(SystemExit, match=r"(?s)synthetic_data: .*syn.*Delete"):
        train.ensure_synthetic_data(config)
