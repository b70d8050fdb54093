"""The lab (docs/lab.md): builders run, their files load through the real weight paths, bad files are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grpose.checkpoint import CheckpointError
from grpose.config import instantiate, load_config
from grpose.lab.estimator_stage import associative_embedding_loss, heatmap_targets
from grpose.lab.loop import run_loop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import lab_pretrain  # noqa: E402

import train  # noqa: E402


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory) -> Path:
    """Two steps of every builder on a 24-image lab dataset (the smoke run of scripts/lab_pretrain.py)."""
    out = tmp_path_factory.mktemp("lab")
    assert lab_pretrain.main(["--stage", "all", "--smoke", str(out)]) == 0
    return out


def lab_model_config(files: Path, *extra: str):
    overrides = [f"base_weights=[{files}/autoencoder.safetensors,{files}/unet.safetensors]", *extra]
    return load_config(ROOT / "configs/lab/grpose.yaml", overrides=overrides)


@pytest.mark.slow
def test_builders_write_files_that_load_through_the_real_paths(lab_files):
    from safetensors import safe_open

    for name in ("autoencoder", "unet", "estimator"):
        with safe_open(str(lab_files / f"{name}.safetensors"), "pt") as fh:
            meta = fh.metadata()
            assert meta["stage"] == name and meta["steps_done"] == "2"
            assert "lab_pretrain.py" in meta["command"]
            assert all(fh.get_tensor(k).dtype in (torch.float16, torch.int64) for k in fh.keys())  # noqa: SIM118 (safe_open is no dict)
    config = lab_model_config(lab_files)
    model = instantiate(config.model, "model")
    train.load_base_weights(model, list(config.base_weights))  # frozen parts strictly, adapter twins copied
    unet_key = "input_blocks.1.0.in_layers.2.weight"
    twin = model.control_model.state_dict().get(unet_key)
    if twin is not None:  # the frozen UNet is stored in bf16 (model.params.frozen_dtype), its trainable twin in fp32
        frozen = model.unet.state_dict()[unet_key]
        assert torch.equal(twin.to(frozen.dtype), frozen)
    estimator_node = config.final_evaluation.pose_estimator
    estimator_node.params.checkpoint = str(lab_files / "estimator.safetensors")
    estimator = instantiate(estimator_node, "pose_estimator")
    people = estimator([np.zeros((128, 128, 3), np.uint8)])
    assert people[0]["keypoints"].shape[1:] == (17, 3)


@pytest.mark.slow
def test_lab_main_job_trains_then_reports_ap_next_to_the_base_model(lab_files, tmp_path):
    import json

    argv = ["--config", str(ROOT / "configs/lab/grpose.yaml"), "--outdir", str(tmp_path), "--name", "run",
            f"base_weights=[{lab_files}/autoencoder.safetensors,{lab_files}/unet.safetensors]",
            f"data.params.train.params.mapping_file={lab_files}/data/mapping_file_training.json",
            f"data.params.train.params.base_dir={lab_files}/data",
            f"data.params.validation.params.mapping_file={lab_files}/data/mapping_file_validation.json",
            f"data.params.validation.params.base_dir={lab_files}/data", "synthetic_data=null",
            "data.params.batch_size=2", "trainer.max_steps=2", "trainer.log_frequency=2",
            "trainer.image_sample_steps=2",
            "final_evaluation.num_images=2", "final_evaluation.ddim_steps=2",
            "final_evaluation.protocols=[corrected,released]",  # the lab default scores the corrected one only
            f"final_evaluation.pose_estimator.params.checkpoint={lab_files}/estimator.safetensors"]  # fmt: skip
    assert train.main(argv) == 0
    rows = json.loads((tmp_path / "lab" / "run" / "final_evaluation.json").read_text())
    assert set(rows) == {"trained", "base only"}
    for row in rows.values():
        assert {"ap", "ap50", "cap", "pce", "ap_released", "pce_released"} <= set(row)
        assert 0.0 <= row["ap"] <= 1.0
    assert list((tmp_path / "lab" / "run" / "images").glob("step_*.png"))


def test_a_wrong_final_evaluation_protocol_stops_the_run_before_training(tmp_path):
    argv = ["--config", str(ROOT / "configs/lab/grpose.yaml"), "--outdir", str(tmp_path),
            "final_evaluation.protocols=[released]"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"final_evaluation.protocols: \['released'\].*'corrected'"):
        train.main(argv)
    assert not (tmp_path / "lab").exists()  # nothing was created: no run folder, no dataset


@pytest.mark.slow
def test_decoder_only_finetuning_keeps_the_latents_and_changes_the_decoder(lab_files, tmp_path):
    from grpose.checkpoint import read_state_dict

    source = lab_files / "autoencoder.safetensors"
    argv = ["--stage", "autoencoder", "--smoke", str(tmp_path), "autoencoder.decoder_only=true",
            f"autoencoder.init_from={source}"]  # fmt: skip
    assert lab_pretrain.main(argv) == 0
    before, after = read_state_dict(source), read_state_dict(tmp_path / "autoencoder.safetensors")
    assert before.keys() == after.keys()
    makes_latents = ("first_stage_model.encoder.", "first_stage_model.quant_conv.")
    frozen = [k for k in before if k.startswith(makes_latents)]
    decoder = [k for k in before if k.startswith("first_stage_model.decoder.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_decoder_only_without_a_trained_autoencoder_says_which_key_to_set(tmp_path):
    with pytest.raises(SystemExit, match=r"autoencoder\.decoder_only.*autoencoder\.init_from"):
        lab_pretrain.main(["--stage", "autoencoder", "--smoke", str(tmp_path), "autoencoder.decoder_only=true"])


def test_missing_lab_weights_name_the_config_key_and_the_rebuild_command(tmp_path):
    config = lab_model_config(tmp_path)
    model = instantiate(config.model, "model")
    with pytest.raises(SystemExit, match=r"(?s)base_weights.*lab_pretrain\.py"):
        train.load_base_weights(model, list(config.base_weights))
    node = config.final_evaluation.pose_estimator
    node.params.checkpoint = str(tmp_path / "missing.safetensors")
    with pytest.raises(
        CheckpointError, match=r"(?s)(?=.*pose_estimator\.params\.checkpoint)(?=.*lab_pretrain\.py --stage estimator)"
    ):
        instantiate(node, "pose_estimator")


@pytest.mark.slow
def test_wrong_architecture_or_corrupted_lab_file_is_refused_whole(lab_files, tmp_path):
    config = lab_model_config(lab_files)
    model = instantiate(config.model, "model")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = [str(lab_files / "estimator.safetensors")]
    with pytest.raises(SystemExit, match=r"(?s)base_weights.*missing"):
        train.load_base_weights(model, wrong)
    corrupt = tmp_path / "unet.safetensors"
    corrupt.write_bytes((lab_files / "unet.safetensors").read_bytes()[:5000])
    with pytest.raises(SystemExit, match=r"(?s)base_weights.*truncated or corrupt"):
        train.load_base_weights(model, [str(lab_files / "autoencoder.safetensors"), str(corrupt)])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a refused file must not be half-loaded"
    node = config.final_evaluation.pose_estimator
    node.params.checkpoint = str(lab_files / "autoencoder.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)does not fit.*pose_estimator\.params\.checkpoint"):
        instantiate(node, "pose_estimator")


def test_training_loop_resumes_to_the_same_weights(tmp_path):
    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 2)

    data = torch.randn(64, 4)

    def step_fn(module):
        def step(_, generator):
            x = data[torch.randint(0, 64, (8,), generator=generator)]
            return {"loss": module(x).pow(2).mean() + 1e-3 * torch.randn((), generator=generator).abs()}

        return step

    straight = make()
    run_loop("a", straight, step_fn(straight), 6, 1e-2, tmp_path / "a", seed=5, warmup_steps=2, save_every=2)
    resumed = make()
    run_loop("b", resumed, step_fn(resumed), 6, 1e-2, tmp_path / "b", seed=5, warmup_steps=2, save_every=2,
             max_seconds=0.0)  # fmt: skip
    assert resumed.stopped_at_step == 0
    again = make()
    run_loop("b", again, step_fn(again), 6, 1e-2, tmp_path / "b", seed=5, warmup_steps=2, save_every=2)
    for a, b in zip(straight.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_heatmap_targets_peak_where_inference_reads_the_joint():
    poses = np.full((1, 2, 17, 3), (-1.0, -1.0, 0.0), np.float32)
    poses[0, 0, 0] = (40.0, 20.0, 1.0)
    poses[0, 1, 5] = (100.0, 90.0, 0.5)
    heatmaps, joints, visible = heatmap_targets(poses, 128, 256, 64, sigma=2.0, threshold=0.02)
    assert heatmaps.shape == (1, 17, 64, 64)
    assert visible.sum() == 2
    # upsampled to the 256 input with align_corners=False, the peak cell u lands at 4u + 1.5 = 2x
    u = (40.0 * 2 - 1.5) / 4
    assert int(heatmaps[0, 0].max(dim=0).values.argmax()) == round(u)
    assert heatmaps[0, 1].max() == 0  # no person has a visible joint 1


def test_associative_embedding_loss_pulls_people_together_and_pushes_them_apart():
    tags = torch.zeros(1, 17, 8, 8)
    joints = torch.tensor([[[0] * 17, [63] * 17]])
    visible = torch.ones(1, 2, 17, dtype=torch.bool)
    pull, push = associative_embedding_loss(tags, joints, visible)
    assert float(pull) == 0.0 and float(push) == pytest.approx(0.5)  # equal tags: exp(0) for the one pair
    separated = torch.zeros(1, 17, 8, 8)
    separated.view(1, 17, -1)[:, :, 63] = 3.0
    assert float(associative_embedding_loss(separated, joints, visible)[1]) < 1e-3


def test_a_stage_continues_from_the_file_given_in_init_from(lab_files, tmp_path):
    """``<stage>.init_from`` starts a stage from an earlier build; a file of another part is refused by name."""
    argv = [
        "--stage",
        "estimator",
        "--smoke",
        str(tmp_path),
        f"estimator.round_trip_autoencoder={lab_files}/autoencoder.safetensors",
    ]
    with pytest.raises(CheckpointError, match=r"does not fit|missing"):
        lab_pretrain.main([*argv, f"estimator.init_from={lab_files}/autoencoder.safetensors"])
    assert lab_pretrain.main([*argv, f"estimator.init_from={lab_files}/estimator.safetensors"]) == 0


def test_shipped_lab_weights_load_strictly_and_the_estimator_finds_the_drawn_people(tmp_path):
    """The committed models/lab files load through the configs' own keys (base_weights, the evaluation estimator),
    and the estimator scores well above chance on lab-style images it never saw (another dataset seed)."""
    from grpose.data.synthetic import make_synthetic_dataset
    from grpose.lab.ceiling import estimator_ceiling

    config = load_config(ROOT / "configs/lab/grpose.yaml")
    model = instantiate(config.model, "model")
    train.load_base_weights(model, [str(ROOT / p) for p in config.base_weights])
    node = load_config(ROOT / "configs/lab/eval.yaml").pose_estimator
    node.params.checkpoint = str(ROOT / node.params.checkpoint)
    estimator = instantiate(node, "pose_estimator")
    make_synthetic_dataset(tmp_path, 48, seed=123, image_size=(152, 144), val_fraction=0.5)
    row = estimator_ceiling(estimator, tmp_path / "mapping_file_validation.json", tmp_path, crop_size=128)
    assert row["num_images"] == 24
    assert row["ap"] > 0.2, row


@pytest.mark.slow
def test_lab_study_scores_every_row_writes_table_and_plot_and_resumes(tmp_path, monkeypatch):
    """scripts/lab_study.py end to end on the shipped lab weights at a toy budget: each row's evaluations, the
    table with the seed count, the plot, each invocation's wall time; a second call resumes (nothing recomputed), a
    call with fewer seeds tables only those, another budget is refused."""
    import json

    import lab_study

    monkeypatch.chdir(ROOT)  # the study names its configs relative to the repository, as documented
    out = tmp_path / "study"
    budget = ["--steps", "2", "--segments", "2", "--num_images", "2", "--ddim_steps", "2"]
    argv = [*budget, "--seeds", "0", "1", "--rows", "base only", "GRPose", "--out", str(out),
            f"dataset.root={tmp_path}/data", "synthetic_data.num=24", "data.params.batch_size=2"]  # fmt: skip
    assert lab_study.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"base only | seed 0", "GRPose | seed 0", "GRPose | seed 1"}
    assert set(results["base only | seed 0"]["evals"]) == {"0"}
    assert set(results["GRPose | seed 1"]["evals"]) == {"1", "2"}
    for record in results.values():
        for row in record["evals"].values():
            assert set(lab_study.COLUMNS) <= set(row) and 0.0 <= row["ap"] <= 1.0
    table = (out / "table.md").read_text()
    assert "| GRPose | 2 |" in table and "| base only | 1 |" in table
    assert (out / "ap_vs_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (timing,) = json.loads((out / "timing.json").read_text())
    assert timing["fresh"] and not timing["default_study"] and timing["seeds"] == [0, 1] and timing["wall_s"] > 0

    assert lab_study.main(argv) == 0  # resumed: every evaluation is on record, nothing is trained again
    assert json.loads((out / "results.json").read_text()) == results
    assert [r["fresh"] for r in json.loads((out / "timing.json").read_text())] == [True, False]
    one_seed = [a for a in argv if a != "1"]  # --seeds 0: the table and plot leave seed 1 out, the record keeps it
    assert lab_study.main(one_seed) == 0
    assert "| GRPose | 1 |" in (out / "table.md").read_text()
    assert json.loads((out / "results.json").read_text()) == results
    with pytest.raises(SystemExit, match="started with"):
        lab_study.main([*argv[:1], "4", *argv[2:]])  # --steps 4 in a folder made with --steps 2


@pytest.mark.slow
def test_short_adapter_training_on_the_lab_base_raises_pose_ap_above_the_base_only_value(tmp_path, monkeypatch):
    """The method working in miniature: 125 adapter steps of the README's main job on the frozen shipped lab base
    make figures the lab estimator matches to their skeletons (on version-1 data: AP 0.007, AP50 0.057 on 16
    validation images in bf16 on the 2-core machine; 0.009 and 0.045 in fp32), where the base alone, on the same
    images and seeds, scores AP 0 (docs/lab.md §6). Deterministic on one machine type; 2.7 minutes on 2 cores,
    dataset creation included."""
    import json

    monkeypatch.chdir(ROOT)  # the lab configs name the shipped weight files relative to the repository
    argv = ["--config", "configs/lab/grpose.yaml", "--outdir", str(tmp_path), "--name", "run",
            f"dataset.root={tmp_path}/data", "trainer.max_steps=125", "trainer.val_every_n_steps=0",
            "trainer.last_every_n_steps=125", "trainer.log_frequency=1000", "final_evaluation.num_images=16",
            "final_evaluation.ddim_steps=10"]  # fmt: skip
    assert train.main(argv) == 0
    rows = json.loads((tmp_path / "lab" / "run" / "final_evaluation.json").read_text())
    trained, base = rows["trained"], rows["base only"]
    assert trained["ap"] > base["ap"] and trained["ap50"] > base["ap50"], rows


def _small_estimator():
    from grpose.pose.estimator import BottomUpPoseEstimator

    torch.manual_seed(0)
    return BottomUpPoseEstimator(
        arch="mobilenetv2_lab", checkpoint=None, allow_random_init=True, width_mult=0.5, head_channels=16, input_size=64
    )


def test_round_trip_images_replace_the_drawn_images_without_changing_the_other_draws():
    """``round_trip_fraction`` swaps drawn images for their round trips and leaves every other draw as before: with
    round trips equal to the images the estimator sees the fraction-0 batch bit for bit, with other images it sees
    those (the augmentation is an affine map of the pixels, so 255 - x stays recognisable)."""
    from grpose.lab.estimator_stage import estimator_step_fn

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    poses = np.concatenate([rng.uniform(4, 28, (6, 1, 17, 2)), np.full((6, 1, 17, 1), 2.0)], axis=-1)
    estimator = _small_estimator()
    settings = {"batch_size": 3, "sigma": 2.0, "tag_weight": 1e-2, "keypoint_threshold": 0.02}
    seen = []
    preprocess = estimator.preprocess
    estimator.preprocess = lambda batch: (seen.append(np.stack(batch)), preprocess(batch))[1]

    def batch_seen(**round_trip) -> np.ndarray:
        step = estimator_step_fn(estimator, images, poses, **settings, **round_trip)
        step(0, torch.Generator().manual_seed(5))
        return seen.pop()

    real = batch_seen()
    assert np.array_equal(batch_seen(round_trips=images.copy(), round_trip_fraction=1.0), real)
    inverted = batch_seen(round_trips=255 - images, round_trip_fraction=1.0)
    assert np.corrcoef(inverted.ravel(), real.ravel())[0, 1] < -0.5
    with pytest.raises(ValueError, match="round_trips of the same shape"):
        estimator_step_fn(estimator, images, poses, **settings, round_trips=images[:2], round_trip_fraction=0.5)


def test_autoencoder_round_trip_is_deterministic_uint8_of_the_input_shape():
    from grpose.lab.estimator_stage import autoencoder_round_trip

    torch.manual_seed(0)
    vae = instantiate(load_config(ROOT / "configs/lab/base.yaml").vae, "vae")
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    first = autoencoder_round_trip(vae, images, batch_size=2)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert np.array_equal(first, autoencoder_round_trip(vae, images, batch_size=2))
    # Across batch sizes the CPU's convolution kernels may sum in another order (oneDNN on Intel Xeon: bits differ),
    # so another batch size agrees to one uint8 level, not bit for bit.
    other = autoencoder_round_trip(vae, images, batch_size=3).astype(int)
    assert np.abs(other - first.astype(int)).max() <= 1
    assert not np.array_equal(first, images)  # a random autoencoder does not reproduce its input


def test_estimator_stage_trains_on_round_trips_of_the_named_autoencoder(lab_files, tmp_path):
    """The estimator stage computes the round trips once (cached by the autoencoder file's hash) and refuses a
    missing autoencoder by its config key."""
    argv = ["--stage", "estimator", "--smoke", str(tmp_path), "estimator.round_trip_fraction=0.5"]
    with pytest.raises(CheckpointError, match=r"estimator\.round_trip_autoencoder"):
        lab_pretrain.main([*argv, f"estimator.round_trip_autoencoder={tmp_path}/none.safetensors"])
    assert lab_pretrain.main([*argv, f"estimator.round_trip_autoencoder={lab_files}/autoencoder.safetensors"]) == 0
    assert len(list((tmp_path / "estimator").glob("round_trips_*.npy"))) == 1
