"""eval_pose.py end to end on the tiny config: 1 vs 2 processes, resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

import eval_pose
from grpose.checkpoint import save_state_dict
from grpose.config import instantiate, load_config
from grpose.data.synthetic import make_synthetic_dataset
from grpose.eval_results import read_results

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/grpose/tiny.yaml")
TINY_METRICS = str(ROOT / "configs/eval/tiny.yaml")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_synthetic_dataset(root / "data", 20, seed=1)
    model = instantiate(load_config(TINY).model, "model")
    with torch.no_grad():  # what a trained model has: nonzero zero-initialised layers
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    ckpt = save_state_dict(model.state_dict(), root / "tiny.ckpt")
    return root, ckpt


def argv(root: Path, ckpt: Path, outdir: Path, *extra: str) -> list[str]:
    return [
        "--config_model", TINY, "--ckpt", str(ckpt), "--config_metrics", TINY_METRICS,
        "--map_file", str(root / "data/mapping_file_validation.json"), "--outdir", str(outdir),
        "--ddim_steps", "2", "--batch_size", "2", "--limit", "5", "--accelerator", "cpu", "--run", "r", *extra,
    ]  # fmt: skip


def records(outdir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((outdir / "grpose/r").glob("results.rank*.jsonl")):
        for r in read_results(path):
            assert r["id"] not in out, f"duplicate {r['id']}"
            out[r["id"]] = r
    return out


def metrics(outdir: Path) -> dict:
    m = json.loads((outdir / "grpose/r/metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in ("checkpoint",)}


@pytest.mark.slow
def test_one_and_two_processes_give_identical_results(setup, tmp_path):
    root, ckpt = setup
    environment, on_ctrl_c = dict(os.environ), signal.getsignal(signal.SIGINT)
    eval_pose.main(argv(root, ckpt, tmp_path / "one"))
    eval_pose.main(argv(root, ckpt, tmp_path / "two", "--devices", "2"))
    leaked = {
        k: os.environ.get(k) for k in set(os.environ) | set(environment) if os.environ.get(k) != environment.get(k)
    }
    assert dict(os.environ) == environment, f"the process launcher changed the environment: {leaked}"
    assert signal.getsignal(signal.SIGINT) == on_ctrl_c, "the process launcher left Ctrl-C handled otherwise"
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(one) == 5 and one == two  # every entry once, the last partial batch included
    assert metrics(tmp_path / "one") == metrics(tmp_path / "two")
    m = metrics(tmp_path / "one")
    assert m["protocol"] == "corrected" and m["num_images"] == 5
    assert {"ap", "ar", "cap", "cap_corrected", "pce", "ap_batch_mean"} <= set(m["pose"])
    panels = list((tmp_path / "one/grpose/r/images").rglob("*.jpg"))
    assert len(panels) == 5
    csv = (tmp_path / "one/grpose/r/metrics.csv").read_text().splitlines()
    assert csv[0].startswith("scene,") and csv[1].startswith("all,")


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(setup, tmp_path):
    root, ckpt = setup
    out = tmp_path / "out"
    eval_pose.main(argv(root, ckpt, out))
    full = records(out)
    shard = out / "grpose/r/results.rank0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed while writing record 3
    (out / "grpose/r/metrics.json").unlink()
    eval_pose.main(argv(root, ckpt, out))
    assert records(out) == full
    assert json.loads((out / "grpose/r/metrics.json").read_text())["num_images"] == 5


@pytest.mark.slow
def test_released_protocol_is_recorded(setup, tmp_path):
    root, ckpt = setup
    eval_pose.main(argv(root, ckpt, tmp_path, "--protocol", "released", "--limit", "2", "--no_panels"))
    m = metrics(tmp_path)
    assert m["protocol"] == "released" and m["pose"]["protocol"] == "released"


def test_checkpoint_that_does_not_fit_fails_before_generation(setup, tmp_path):
    root, _ = setup
    config = load_config(TINY, overrides=["model.params.adapter.params.model_channels=64"])
    wrong = save_state_dict(instantiate(config.model, "model").state_dict(), tmp_path / "wrong.ckpt")
    with pytest.raises(SystemExit, match=r"(?s)does not fit the model config.*control_model"):
        eval_pose.main(argv(root, wrong, tmp_path / "o"))
    assert not list((tmp_path / "o").rglob("results*.jsonl"))


def test_missing_pose_estimator_weights_are_named(setup, tmp_path):
    root, ckpt = setup
    with pytest.raises(SystemExit, match=r"higherhrnet_w48_humanart_512x512_udp\.pth.*pose_estimator\.params"):
        eval_pose.main(argv(root, ckpt, tmp_path / "o")[:-2] + ["--config_metrics", "configs/eval/metrics.yaml"])


def test_missing_image_in_map_file_is_named(setup, tmp_path):
    root, ckpt = setup
    data = tmp_path / "data"
    make_synthetic_dataset(data, 8, seed=2)
    mapping = json.loads((data / "mapping_file_validation.json").read_text())
    victim = sorted(mapping)[0]
    (data / mapping[victim]["img_path"]).unlink()
    args = argv(root, ckpt, tmp_path / "o")
    args[args.index("--map_file") + 1] = str(data / "mapping_file_validation.json")
    with pytest.raises(SystemExit, match=rf"entry {victim}: img_path .* does not exist"):
        eval_pose.main(args)


def test_unwritable_output_directory_fails_first(setup, tmp_path):
    root, ckpt = setup
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit, match="cannot write to"):
        eval_pose.main(argv(root, ckpt, blocker / "sub"))


@pytest.mark.slow
def test_quality_metrics_from_the_same_command(setup, tmp_path):
    import torchvision

    root, ckpt = setup
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    inception = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), inception)
    clip_name, clip = _tiny_clip(tmp_path)
    config = tmp_path / "metrics.yaml"
    text = Path(TINY_METRICS).read_text().replace("inception: null", f"inception: {inception}")
    text = text.replace("clip: null", f"clip: {clip}\n  clip_arch: {clip_name}")
    config.write_text(text + "  kid_subset_size: 2\n")
    args = argv(root, ckpt, tmp_path / "o", "--metrics", "all", "--limit", "3")
    args[args.index("--config_metrics") + 1] = str(config)
    eval_pose.main(args)
    quality = metrics(tmp_path / "o")["quality"]
    assert quality["fid_pooled"] is not None and quality["fid_pooled"] >= 0
    assert set(quality["per_scene"]) and "pose" in metrics(tmp_path / "o")
    # metrics.json says which CLIP model scored the CLIP-score
    assert quality["clip_model"] == clip_name and quality["clip_checkpoint"] == str(clip)
    assert 0 <= quality["clip_score"] <= 100


def _tiny_clip(tmp_path: Path) -> tuple[str, Path]:
    """A random tiny open_clip model registered under a test name, and its state-dict file."""
    import open_clip

    name = "grpose-test-tiny-clip-eval"
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(0)
    path = tmp_path / "tiny_clip.pt"
    torch.save(open_clip.create_model(name).state_dict(), path)
    return name, path


@pytest.mark.slow
def test_pose2img_from_npz_json_and_skeleton_image(setup, tmp_path):
    import importlib.util

    import numpy as np

    root, ckpt = setup
    spec = importlib.util.spec_from_file_location("pose2img", ROOT / "scripts/pose2img.py")
    pose2img = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pose2img)
    npz = sorted((root / "data/pose").rglob("*.npz"))[0]
    people = np.load(npz, allow_pickle=True)["arr_0"]
    coco = tmp_path / "pose.json"
    coco.write_text(
        json.dumps({"annotations": [{"keypoints": np.asarray(p["keypoints"]).ravel().tolist()} for p in people]})
    )
    common = ["--config", TINY, "--ckpt", str(ckpt), "--prompt", "a dancer", "--steps", "2", "--device", "cpu"]
    for i, pose in enumerate([npz, coco]):
        assert pose2img.main([*common, "--pose", str(pose), "--out", str(tmp_path / f"o{i}")]) == 0
        assert (tmp_path / f"o{i}/sample_00.png").is_file() and (tmp_path / f"o{i}/overlay_00.png").is_file()
    assert pose2img.main([*common, "--pose", str(tmp_path / "o0/pose.png"), "--out", str(tmp_path / "o2")]) == 0
    assert (tmp_path / "o2/sample_00.png").is_file()
    with pytest.raises(SystemExit, match="unsupported file type"):
        pose2img.main([*common, "--pose", str(tmp_path / "pose.txt"), "--out", str(tmp_path / "o3")])


@pytest.mark.slow
def test_scores_existing_images_without_a_checkpoint(setup, tmp_path):
    root, ckpt = setup
    eval_pose.main(argv(root, ckpt, tmp_path / "gen", "--limit", "3"))
    images = tmp_path / "gen/grpose/r/images"
    args = argv(root, ckpt, tmp_path / "score", "--limit", "3", "--images_dir", str(images))
    del args[args.index("--ckpt") : args.index("--ckpt") + 2]
    eval_pose.main(args)
    scored = records(tmp_path / "score")
    assert sorted(scored) == sorted(records(tmp_path / "gen")) and all("detections" in r for r in scored.values())
    assert metrics(tmp_path / "score")["num_images"] == 3
    with pytest.raises(SystemExit, match="pass --ckpt"):
        eval_pose.main([a for a in args if a not in ("--images_dir", str(images))])
