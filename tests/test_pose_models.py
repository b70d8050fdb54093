"""Pose networks: mmpose key layout, strict loading, the estimator API and the differentiable PoseFeatureNetwork."""

from pathlib import Path

import numpy as np
import pytest
import torch

from grpose.checkpoint import CheckpointError
from grpose.pose.estimator import BottomUpPoseEstimator, build_pose_model, load_mmpose_checkpoint
from grpose.pose.features import PoseFeatureNetwork
from grpose.pose.mobilenetv2 import rename_mmpose_key

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
REAL = {
    "higherhrnet_w48": ROOT / "models" / "higherhrnet_w48_humanart_512x512_udp.pth",
    "mobilenetv2": ROOT / "models" / "mobilenetv2_coco_512x512-4d96e309_20200816.pth",
}


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (DATA / name).read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return out


def _random_like(model: torch.nn.Module, rename=None) -> dict[str, torch.Tensor]:
    return {k: torch.randn(v.shape) if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("arch", "manifest", "rename"),
    [("higherhrnet_w48", "higherhrnet_w48_keys.tsv", None), ("mobilenetv2", "mobilenetv2_ae_keys.tsv", True)],
)
def test_state_dict_layout_matches_mmpose(arch, manifest, rename):
    model = build_pose_model(arch)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _manifest(manifest)
    mapped = {(rename_mmpose_key(k) if rename else k): s for k, s in expected.items()}
    assert mapped == own
    if arch == "higherhrnet_w48":
        assert sum(p.numel() for p in model.backbone.parameters()) == 63_594_912
        assert sum(p.numel() for p in model.keypoint_head.parameters()) == 232_227


def test_strict_loading_reports_keys(tmp_path):
    model = build_pose_model("mobilenetv2")
    expected = _manifest("mobilenetv2_ae_keys.tsv")
    sd = {k: torch.zeros(s) if s else torch.tensor(0) for k, s in expected.items()}
    # a mmcv checkpoint with a DDP prefix and without num_batches_tracked loads
    trimmed = {"module." + k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save({"meta": {}, "state_dict": trimmed}, tmp_path / "ok.pth")
    load_mmpose_checkpoint(model, str(tmp_path / "ok.pth"), "mobilenetv2")
    assert float(model.keypoint_head.final_layer.bias.detach().abs().sum()) == 0
    bad = dict(sd)
    bad.pop("keypoint_head.final_layer.bias")
    bad["keypoint_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing \(1\): keypoint_head.final_layer.bias") as err:
        load_mmpose_checkpoint(model, bad, "mobilenetv2")
    assert "unexpected (1): keypoint_head.extra.weight" in str(err.value)
    bad = dict(sd)
    bad["backbone.conv1.conv.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_mmpose_checkpoint(model, bad, "mobilenetv2")


def test_missing_checkpoint_names_the_file():
    with pytest.raises(CheckpointError, match="models/higherhrnet_w48_humanart_512x512_udp.pth"):
        BottomUpPoseEstimator("higherhrnet_w48", None)
    with pytest.raises(CheckpointError, match="models/mobilenetv2_coco_512x512-4d96e309_20200816.pth"):
        BottomUpPoseEstimator("mobilenetv2", None)
    with pytest.raises(CheckpointError, match="mobilenetv2_coco_512x512"):
        PoseFeatureNetwork(None)
    with pytest.raises(CheckpointError, match="not found"):
        BottomUpPoseEstimator("mobilenetv2", "models/does_not_exist.pth")


@pytest.mark.parametrize("arch", list(REAL))
def test_real_checkpoints_load(arch):
    path = REAL[arch]
    if not path.is_file():
        pytest.skip(f"{path.name} not in models/")
    est = BottomUpPoseEstimator(arch, str(path))
    out = est([np.zeros((128, 128, 3), np.uint8)])
    assert out[0]["keypoints"].shape[1:] == (17, 3)
    if arch == "mobilenetv2":
        PoseFeatureNetwork(str(path))


@pytest.fixture(scope="module")
def small_estimator():
    torch.manual_seed(0)
    est = BottomUpPoseEstimator("higherhrnet_w18_small", None, allow_random_init=True, input_size=128)
    with torch.no_grad():  # tame random heatmaps (small values around 0): a handful of people, fast grouping
        for conv in est.model.keypoint_head.final_layers:
            conv.weight.mul_(0.002)
            conv.bias.zero_()
    return est


@pytest.mark.slow
def test_estimator_inputs_and_outputs(small_estimator):
    est = small_estimator
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    out = est(images)
    assert len(out) == 2
    for res in out:
        p = res["keypoints"].shape[0]
        assert res["keypoints"].shape == (p, 17, 3) and res["keypoints"].dtype == np.float32
        assert res["scores"].shape == (p,) and res["scores"].dtype == np.float32
        assert res["areas"].shape == (p,) and res["areas"].dtype == np.float32
        assert np.all(np.diff(res["scores"]) <= 0)  # pose NMS order: best first
    # a float tensor in [0, 1] or [-1, 1] on uint8 levels gives the same people as the arrays
    t01 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    for tensor, value_range in ((t01, (0.0, 1.0)), (t01 * 2 - 1, (-1.0, 1.0))):
        est.value_range = value_range
        out_t = est(tensor + 1e-4)  # the truncation to uint8 levels removes the offset
        est.value_range = (0.0, 1.0)
        for a, b in zip(out, out_t):
            np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
    # channel order: BGR arrays with channel_order='bgr' == RGB arrays with 'rgb'
    est.channel_order = "bgr"
    out_bgr = est([im[..., ::-1].copy() for im in images])
    est.channel_order = "rgb"
    for a, b in zip(out, out_bgr):
        np.testing.assert_array_equal(a["keypoints"], b["keypoints"])


def test_estimator_non_square_image(small_estimator):
    img = np.random.default_rng(1).integers(0, 256, (96, 150, 3), dtype=np.uint8)
    x, metas = small_estimator.preprocess([img])
    assert tuple(x.shape) == (1, 3, 128, 256) and metas[0].base_size == (256, 128)
    (res,) = small_estimator([img])
    vis = res["keypoints"][..., 2] > 0
    # the network input covers scale = (190.7, 95) image pixels (the right part is padding): coordinates stay inside
    xy = res["keypoints"][vis][:, :2]
    assert np.all(xy >= -1) and np.all(xy <= metas[0].scale + 1)


def test_pose_feature_network_gradients_and_freezing():
    net = PoseFeatureNetwork(None, allow_random_init=True, width_mult=0.25)
    assert all(not p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training and not net.backbone.training
    x = (torch.rand(2, 3, 64, 96) * 2 - 1).requires_grad_(True)
    feat = net(x)
    assert feat.shape == (2, 1280, 2, 3)
    feat.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # flip=True is the flipped pass: same as flip=False on the mirrored image
    net_nf = PoseFeatureNetwork(None, flip=False, allow_random_init=True, width_mult=0.25)
    net_nf.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(x), net_nf(torch.flip(x, [3])))


def test_pose_feature_network_loads_backbone_keys_only(tmp_path):
    model = build_pose_model("mobilenetv2")
    sd = {}
    for k, v in _manifest("mobilenetv2_ae_keys.tsv").items():
        sd[k] = torch.rand(v) + 0.5 if v else torch.tensor(0)
    torch.save({"state_dict": sd}, tmp_path / "mnv2.pth")
    net = PoseFeatureNetwork(str(tmp_path / "mnv2.pth"))
    load_mmpose_checkpoint(model, sd, "mobilenetv2")
    model.eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = model.forward_backbone(torch.flip((((x + 1) / 2) - net.mean) / net.std, [3]))
        torch.testing.assert_close(net(x), ref)
