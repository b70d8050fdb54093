"""prepare_weights.py: tiny synthetic SD file -> strictly loadable init checkpoint; wrong architectures fail (#8)."""

from pathlib import Path

import pytest
import torch
from torch import nn

import prepare_weights
import train
from grpose.checkpoint import CheckpointError, load_into, read_state_dict, save_state_dict
from grpose.config import instantiate, load_config
from grpose.diffusion.schedule import SCHEDULE_BUFFER_NAMES

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/grpose/tiny.yaml"
MANIFEST = ROOT / "tests/data/grpose_humanart_state_dict.tsv"
SD_PARTS = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."}


def make_sd_file(path: Path, config_path: Path = TINY, drop_position_ids: bool = False, **overrides) -> dict:
    """A fake SD1.5 file: the config's backbone with random values in the ldm layout, plus EMA keys to ignore."""
    params = load_config(config_path, overrides=[f"{k}={v}" for k, v in overrides.items()]).model.params
    state = {}
    for name, prefix in SD_PARTS.items():
        for key, value in instantiate(params[name]).state_dict().items():
            if drop_position_ids and key.endswith("position_ids"):
                continue
            state[prefix + key] = value if value.dtype == torch.int64 else torch.randn_like(value)
    state["model_ema.decay"] = torch.tensor(0.999)
    save_state_dict(state, path)
    return state


class Composite(nn.Module):
    """The composite layout train.py's model uses (docs/checkpoints.md §1), for a strict load of the output."""

    def __init__(self, params) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = instantiate(params.unet)
        self.first_stage_model = instantiate(params.vae)
        self.cond_stage_model = instantiate(params.text_encoder)
        self.control_model = instantiate(params.adapter)
        for name in SCHEDULE_BUFFER_NAMES:
            self.register_buffer(name, torch.zeros(int(params.timesteps)))


@pytest.mark.parametrize(("suffix", "drop_position_ids"), [(".ckpt", False), (".safetensors", True)])
def test_tiny_init_checkpoint_loads_strictly(tmp_path, capsys, suffix, drop_position_ids):
    sd = make_sd_file(tmp_path / f"sd{suffix}", drop_position_ids=drop_position_ids)
    out = tmp_path / f"init{suffix}"
    report = prepare_weights.main([str(tmp_path / f"sd{suffix}"), str(TINY), str(out)])
    printed = capsys.readouterr().out
    assert "fresh init" in printed and "control_model.zero_convs.*.*" in printed and "model_ema" in printed

    state = read_state_dict(out)
    model = Composite(load_config(TINY).model.params)
    load_into(model, state, strict=True, ignore=())
    for key, value in sd.items():  # backbone copied verbatim
        if not key.startswith("model_ema"):
            torch.testing.assert_close(state[key], value)
    # adapter: encoder-copy keys come from the UNet, PGI-only / zero-conv keys keep their fresh init
    twin = "model.diffusion_model."
    torch.testing.assert_close(
        state["control_model.input_blocks.2.0.in_layers.2.weight"], sd[twin + "input_blocks.2.0.in_layers.2.weight"]
    )
    torch.testing.assert_close(
        state["control_model.input_blocks.1.0.in_layers.2.weight"], sd[twin + "input_blocks.1.0.in_layers.2.weight"]
    )
    torch.testing.assert_close(
        state["control_model.middle_block.1.proj_in.weight"], sd[twin + "middle_block.1.proj_in.weight"]
    )
    assert not state["control_model.zero_convs.3.0.weight"].any()
    assert not state["control_model.input_blocks.4.0.out_layers.2.weight"].any()
    assert "control_model.input_blocks.1.0.gnn.graph_conv.gconv.nn.0.weight" in report["fresh"]
    assert all(not k.startswith(("control_model.input_blocks.2.", "control_model.time_embed")) for k in report["fresh"])
    assert state["alphas_cumprod"].shape == (1000,) and 0.99 < float(state["alphas_cumprod"][0]) < 1.0


def test_wrong_architecture_names_the_first_mismatching_keys(tmp_path, capsys):
    make_sd_file(tmp_path / "sd2.ckpt", **{"model.params.unet.params.context_dim": 64})  # SD2-like cross-attention
    with pytest.raises(SystemExit):
        prepare_weights.main([str(tmp_path / "sd2.ckpt"), str(TINY), str(tmp_path / "out.ckpt")])
    err = capsys.readouterr().err
    assert "another architecture" in err and "attn2.to_k.weight: file (64, 64) vs model (64, 32)" in err
    assert not (tmp_path / "out.ckpt").exists()


def test_missing_backbone_keys_are_named(tmp_path):
    state = make_sd_file(tmp_path / "sd.ckpt")
    renamed = {k.replace("cond_stage_model.transformer.", "cond_stage_model.model."): v for k, v in state.items()}
    save_state_dict(renamed, tmp_path / "openclip.ckpt")
    with pytest.raises(CheckpointError, match=r"cond_stage_model\.transformer\.text_model\.\S+: missing from the file"):
        prepare_weights.prepare_weights(tmp_path / "openclip.ckpt", TINY, tmp_path / "out.ckpt")


def test_missing_sd_file_says_what_it_is(tmp_path):
    with pytest.raises(CheckpointError, match="Stable Diffusion 1.5 checkpoint"):
        prepare_weights.prepare_weights(tmp_path / "nope.ckpt", TINY, tmp_path / "out.ckpt")


def manifest_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in MANIFEST.read_text().splitlines():
        key, shape, _ = line.split("\t")
        shapes[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return shapes


def test_real_size_composite_on_meta_matches_the_released_checkpoint():
    params = load_config(ROOT / "configs/grpose/humanart.yaml").model.params
    parts = prepare_weights.build_parts(params, device="meta")
    ours = {
        prepare_weights.PART_PREFIXES[name] + k: tuple(v.shape)
        for name, module in parts.items()
        for k, v in module.state_dict().items()
    }
    ours.update({name: (1000,) for name in SCHEDULE_BUFFER_NAMES})
    expected = {k: v for k, v in manifest_shapes().items() if not k.startswith("mmpose_model.")}
    assert sorted(set(expected) ^ set(ours)) == []
    assert {k: (v, expected[k]) for k, v in ours.items() if expected[k] != v} == {}
    # docs/release_behaviours.md §10: 274 adapter keys have a same-shaped UNet twin, 200 are new
    sd_shapes = {k: v for k, v in ours.items() if k.startswith("model.diffusion_model.")}
    adapter = {k: tuple(v.shape) for k, v in parts["adapter"].state_dict().items()}
    copied, fresh = prepare_weights.plan_adapter_init(adapter, sd_shapes)
    assert (len(copied), len(fresh)) == (274, 200)


def test_output_loads_through_train_control_ckpt(tmp_path):
    make_sd_file(tmp_path / "sd.ckpt")
    prepare_weights.prepare_weights(tmp_path / "sd.ckpt", TINY, tmp_path / "init.ckpt")
    model = instantiate(load_config(TINY).model)
    train.load_control_ckpt(model, str(tmp_path / "init.ckpt"))  # strict; raises SystemExit on any mismatch
