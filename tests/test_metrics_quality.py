"""Tests of grpose.metrics.quality and scripts/eval_quality.py with random local weights (docs/metrics.md §8)."""

import json
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from PIL import Image

from grpose.metrics.quality import (
    INCEPTION_FILENAME,
    InceptionFeatures,
    center_crop_resize,
    clip_score,
    extract_features,
    fid_from_features,
    kid_from_features,
    load_clip,
    quality_from_features,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP = "grpose-test-tiny-clip"


@pytest.fixture(scope="module")
def inception_path(tmp_path_factory) -> Path:
    """A random-init Inception-v3 state dict in the FID layout (torchvision names, 1008 classes, no aux head)."""
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILENAME
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    import open_clip

    cfg_dir = tmp_path_factory.mktemp("clipcfg")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (cfg_dir / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    path = cfg_dir / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


def _images(seed: int, n: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_missing_weight_files_name_flag_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--inception.*pt_inception-2015-12-05-6726825d\.pth"):
        InceptionFeatures(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"--clip"):
        load_clip(tmp_path / "nope.bin")


def test_fid_kid_with_local_random_inception(inception_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    net = InceptionFeatures(inception_path, ["64"])
    x, y = _images(0, 6), _images(1, 6) // 2
    fx = extract_features(iter(x), net, batch_size=4)["64"]
    fy = extract_features([y[:3], y[3:]], net, batch_size=4)["64"]
    assert fx.shape == (6, 64) and fx.dtype == torch.float64
    assert abs(fid_from_features(fx, fx)) < 1e-6
    assert fid_from_features(fx, fy) > 1e-4
    kxy, kyx = kid_from_features(fx, fy, subset_size=200)[0], kid_from_features(fy, fx, subset_size=200)[0]
    assert kxy == pytest.approx(kyx, rel=1e-6) and kxy > 0  # subset clamped to 6 = all samples: symmetric
    # unbiased MMD estimate: ~0 (not exactly, the cross term keeps the diagonal) for identical sets
    assert abs(kid_from_features(fx, fx, subset_size=200)[0]) < 0.1 * kxy
    assert fid_from_features(fx[:1], fy) is None and kid_from_features(fx[:1], fy) is None
    with pytest.raises(ValueError, match="uint8"):
        net(x.float())


def test_fid_equals_closed_form():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(30, 6, generator=g, dtype=torch.float64)
    b = b * 1.5 + 0.3
    a_np, b_np = a.numpy(), b.numpy()
    s1, s2 = np.cov(a_np, rowvar=False), np.cov(b_np, rowvar=False)
    ref = ((a_np.mean(0) - b_np.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-6)


def test_per_scene_mean_and_pooled():
    g = torch.Generator().manual_seed(4)

    def feats(n: int, shift: float) -> dict[str, torch.Tensor]:
        return {"64": torch.randn(n, 4, generator=g, dtype=torch.float64) + shift}

    real = {"a": feats(12, 0.0), "b": feats(10, 1.0), "c": feats(1, 0.0)}
    fake = {"a": feats(8, 0.5), "b": feats(9, 1.0), "c": feats(5, 0.0), "d": feats(3, 0.0)}
    res = quality_from_features(real, fake, fid_feature="64", kid_feature="64", kid_subset_size=200, kid_subsets=5)
    assert sorted(res["per_scene"]) == ["a", "b", "c"] and res["scenes_missing_real"] == ["d"]
    fa, fb = (fid_from_features(real[s]["64"], fake[s]["64"]) for s in "ab")
    assert res["per_scene"]["c"]["fid"] is None and res["per_scene"]["c"]["kid"] is None
    assert res["fid_scene_mean"] == pytest.approx((fa + fb) / 2)  # scenes without a value are left out (Q22)
    pooled_real = torch.cat([real[s]["64"] for s in "abc"])
    pooled_fake = torch.cat([fake[s]["64"] for s in "abcd"])
    assert res["fid_pooled"] == pytest.approx(fid_from_features(pooled_real, pooled_fake))
    ka = kid_from_features(real["a"]["64"], fake["a"]["64"], 200, 5)[0]
    assert res["per_scene"]["a"]["kid"] == pytest.approx(ka)
    assert res["num_real"] == 23 and res["num_fake"] == 25


def test_center_crop_resize():
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, 20:60] = 255  # centre square white
    out = center_crop_resize(Image.fromarray(arr), 20)
    assert out.shape == (3, 20, 20) and out.dtype == torch.uint8
    assert out.float().mean() > 250


def test_clip_score_matches_manual_definition(tiny_clip):
    model, preprocess, tokenizer = load_clip(tiny_clip, TINY_CLIP)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = ["a person dancing", "a statue", "two people running on a beach"]
    res = clip_score(images, prompts, model, preprocess, tokenizer, batch_size=2)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i) for i in images]))
        txt = model.encode_text(tokenizer(prompts))
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert res["clip_score"] == pytest.approx(float((100 * cos.clamp(min=0)).mean()), abs=1e-4)
    assert res["num_pairs"] == 3


def test_eval_quality_script_end_to_end(tmp_path, inception_path, tiny_clip):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import eval_quality
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(1)
    base, out = tmp_path / "data", tmp_path / "run"
    mapping = {}
    for scene in ("dance", "sculpture"):
        (base / "images" / scene).mkdir(parents=True)
        (out / "images" / scene).mkdir(parents=True)
        for k in range(3):
            name = f"{scene}_{k:03d}"
            Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(
                base / "images" / scene / f"{name}.jpg"
            )
            panel = rng.integers(0, 256, (24, 96, 3), dtype=np.uint8)
            Image.fromarray(panel).save(out / "images" / scene / f"{name}.jpg")
            mapping[name] = {"img_path": f"images/{scene}/{name}.jpg", "prompt": f"a {scene} photo", "pose_path": "x"}
    (base / "images" / "dance" / "extra.jpg").write_bytes((base / "images" / "dance" / "dance_000.jpg").read_bytes())
    mapping["extra"] = {"img_path": "images/dance/extra.jpg", "prompt": "extra", "pose_path": "x"}
    (base / "mapping.json").write_text(json.dumps(mapping))
    args = ["--images", str(out), "--real_map", str(base / "mapping.json"), "--base", str(base)]
    args += ["--inception", str(inception_path), "--fid_feature", "64", "--kid_feature", "64", "--kid_subsets", "3"]
    clip_args = ["--clip", str(tiny_clip), "--clip_model", TINY_CLIP, "--device", "cpu"]
    res = eval_quality.main([*args, *clip_args])
    saved = json.loads((out / "metrics_quality.json").read_text())
    assert saved["per_scene"]["dance"]["num_real"] == 4 and saved["per_scene"]["dance"]["num_fake"] == 3
    assert saved["image_size"] == 24 and math.isfinite(saved["fid_pooled"]) and saved["fid_pooled"] > 0
    assert 0 <= res["clip_score"] <= 100 and "clip_score" in saved["per_scene"]["sculpture"]
    assert saved["clip_model"] == TINY_CLIP and saved["clip_checkpoint"] == str(tiny_clip)
    res2 = eval_quality.main([*args, "--matched_only", "--out", str(tmp_path / "m.json")])
    assert res2["per_scene"]["dance"]["num_real"] == 3 and res2["clip_score"] is None


def test_default_clip_model_is_openai_vit_b16_as_in_the_paper_table():
    """HumanSD / Stable-Pose scored CLIP-score with torchmetrics CLIPScore and openai/clip-vit-base-patch16."""
    import inspect

    import open_clip
    from omegaconf import OmegaConf

    from grpose.metrics.quality import DEFAULT_CLIP_MODEL

    assert DEFAULT_CLIP_MODEL == "ViT-B-16-quickgelu"
    assert inspect.signature(load_clip).parameters["model_name"].default == DEFAULT_CLIP_MODEL
    cfg = open_clip.get_model_config(DEFAULT_CLIP_MODEL)
    # the architecture of openai/clip-vit-base-patch16 (hidden_act quick_gelu, projection 512)
    assert cfg["quick_gelu"] and cfg["embed_dim"] == 512
    assert (cfg["vision_cfg"]["patch_size"], cfg["vision_cfg"]["width"], cfg["vision_cfg"]["layers"]) == (16, 768, 12)
    assert cfg["vision_cfg"]["image_size"] == 224 and cfg["text_cfg"]["width"] == 512
    assert open_clip.get_pretrained_cfg("ViT-B-16", "openai")["quick_gelu"]
    quality = OmegaConf.load(ROOT / "configs/eval/metrics.yaml").quality
    assert quality.clip_arch == DEFAULT_CLIP_MODEL and "b16" in quality.clip
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import eval_quality
    finally:
        sys.path.pop(0)
    assert eval_quality.parse_args(["--images", "x", "--real_map", "y"]).clip_model == DEFAULT_CLIP_MODEL
