"""Slim exports (docs/checkpoints.md §4): trained weights only, joined with a base file, same images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import train
from grpose.checkpoint import save_state_dict
from grpose.config import instantiate, load_config
from grpose.evaluation.model_loading import load_model

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/grpose/tiny.yaml")
sys.path.insert(0, str(ROOT / "scripts"))

import export_adapter  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny GRPose checkpoint with a trained-looking adapter, and its frozen parts as a separate base file."""
    out = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = instantiate(load_config(TINY).model, "model")
    with torch.no_grad():
        for p in model.control_model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero convs away from zero, as after training
    state = model.state_dict()
    save_state_dict(state, out / "full.ckpt")
    save_state_dict({k: v for k, v in state.items() if not k.startswith("control_model.")}, out / "base.safetensors")
    return {"full": out / "full.ckpt", "base": out / "base.safetensors", "dir": out}


def sample(model) -> torch.Tensor:
    hint = torch.zeros(1, 3, 64, 64)
    hint[:, :, 20:40, 30:34] = 1.0
    noise = torch.randn(1, model.latent_channels, 8, 8, generator=torch.Generator().manual_seed(3))
    return model.sample(hint, ["a person"], noise=noise, num_steps=2, guidance_scale=3.0)


def test_export_then_reload_with_the_base_gives_identical_images(files, capsys):
    slim = files["dir"] / "adapter.safetensors"
    assert export_adapter.main(["--config", TINY, "--ckpt", str(files["full"]), "--out", str(slim)]) == 0
    with safe_open(str(slim), "pt") as fh:
        names = fh.keys()
        assert names and all(k.startswith("control_model.") for k in names)
        assert "model:" in fh.metadata()["config"] and fh.metadata()["dtype"] == "fp32"
    assert slim.stat().st_size < files["full"].stat().st_size / 2
    config = load_config(TINY)
    reference = load_model(config, ckpt=str(files["full"]), base_model=None, config_files=[TINY], device="cpu")
    joined = load_model(config, ckpt=str(slim), base_model=str(files["base"]), config_files=[TINY], device="cpu")
    assert all(torch.equal(v, joined.state_dict()[k]) for k, v in reference.state_dict().items())
    assert torch.equal(sample(reference), sample(joined))
    # train.py --control_ckpt takes the same pair
    model = instantiate(config.model, "model")
    train.load_control_ckpt(model, str(slim), str(files["base"]))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.state_dict().items())


def test_half_precision_export_is_smaller_and_loads_into_the_fp32_model(files):
    sizes = {}
    for dtype in ("fp16", "fp32"):
        out = files["dir"] / f"adapter_{dtype}.safetensors"
        argv = ["--config", TINY, "--ckpt", str(files["full"]), "--out", str(out), "--dtype", dtype]
        assert export_adapter.main(argv) == 0
        sizes[dtype] = out.stat().st_size
    assert sizes["fp16"] < 0.6 * sizes["fp32"]
    slim = files["dir"] / "adapter_fp16.safetensors"
    model = instantiate(load_config(TINY).model, "model")
    train.load_control_ckpt(model, str(slim), str(files["base"]))
    assert model.control_model.zero_convs[0][0].weight.dtype == torch.float32


def test_an_export_without_its_base_or_a_base_without_an_export_is_refused(files):
    slim = files["dir"] / "adapter_refused.safetensors"
    export_adapter.main(["--config", TINY, "--ckpt", str(files["full"]), "--out", str(slim)])
    config = load_config(TINY)
    with pytest.raises(SystemExit, match="--base_model"):
        load_model(config, ckpt=str(slim), base_model=None, config_files=[TINY], device="cpu")
    model = instantiate(config.model, "model")
    with pytest.raises(SystemExit, match="--base_model"):
        train.load_control_ckpt(model, str(slim), None)
    with pytest.raises(SystemExit, match="export"):
        train.load_control_ckpt(model, str(files["full"]), str(files["base"]))
    with pytest.raises(SystemExit, match="safetensors"):
        export_adapter.main(["--config", TINY, "--ckpt", str(files["full"]), "--out", str(files["dir"] / "x.ckpt")])
