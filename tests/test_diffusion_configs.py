"""configs/sd15.yaml builds the real-size SD1.5 parts whose keys and shapes equal the released GRPose checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpose.config import instantiate, load_config
from grpose.diffusion.schedule import make_beta_schedule, schedule_buffers

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "data" / "grpose_humanart_state_dict.tsv"
PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."}


def _manifest() -> dict[str, tuple[tuple[int, ...], str]]:
    entries = {}
    for line in MANIFEST.read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        entries[key] = (dims, dtype)
    return entries


def _shapes(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("part", sorted(PREFIXES))
def test_sd15_config_matches_released_manifest(part):
    config = load_config(ROOT / "configs" / "sd15.yaml")
    with torch.device("meta"):
        module = instantiate(config[part], yaml_path=part)
    prefix = PREFIXES[part]
    expected = {k[len(prefix) :]: v for k, v in _manifest().items() if k.startswith(prefix)}
    ours = _shapes(module)
    assert sorted(set(expected) - set(ours)) == []  # missing in ours
    assert sorted(set(ours) - set(expected)) == []  # extra in ours
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}


def test_sd15_unet_parameter_count():
    config = load_config(ROOT / "configs" / "sd15.yaml")
    with torch.device("meta"):
        unet = instantiate(config.unet, yaml_path="unet")
    # 859.52 M parameters (docs/release_behaviours.md §1).
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2) == 859.52


def test_schedule_buffer_names_and_shapes_match_manifest():
    config = load_config(ROOT / "configs" / "sd15.yaml")
    s = config  # the noise schedule keys sit at the top level (they are GRPoseModel arguments)
    buffers = schedule_buffers(make_beta_schedule("linear", s.timesteps, s.linear_start, s.linear_end))
    expected = {k: v for k, v in _manifest().items() if "." not in k}
    assert {k: (tuple(v.shape), str(v.dtype)) for k, v in buffers.items()} == expected


def test_tiny_config_runs_end_to_end():
    config = load_config(ROOT / "configs" / "sd15_tiny.yaml")
    unet = instantiate(config.unet, yaml_path="unet").eval()
    vae = instantiate(config.vae, yaml_path="vae").eval()
    text_encoder = instantiate(config.text_encoder, yaml_path="text_encoder").eval()
    assert len(unet.input_blocks) + 1 == 13
    with torch.no_grad():
        image = torch.rand(1, 3, 64, 64) * 2 - 1
        z = vae.encode(image).mode() * config.scale_factor
        assert z.shape == (1, 4, 8, 8)
        context = text_encoder(["a person"])
        assert context.shape == (1, 77, 32)
        eps = unet(z, torch.tensor([500]), context)
        assert eps.shape == z.shape
        assert vae.decode(z / config.scale_factor).shape == image.shape
