"""UNet: numerical parity with diffusers' UNet2DConditionModel (ldm conversion), control residuals, frozen encoder."""

from __future__ import annotations

import pytest
import torch

from grpose.diffusion.unet import UNetModel, UNetSpec, build_input_blocks

TINY = dict(
    in_channels=4,
    model_channels=32,
    out_channels=4,
    num_res_blocks=2,
    attention_resolutions=(4, 2, 1),
    channel_mult=(1, 2, 2, 2),
    num_heads=2,
    context_dim=32,
)


def _randomize(module: torch.nn.Module) -> None:
    """Give every parameter (zero-initialised ones included) random values so all paths are exercised."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


@pytest.fixture(scope="module")
def unet_pair():
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        create_unet_diffusers_config_from_ldm,
    )

    torch.manual_seed(0)
    ours = UNetModel(**TINY).eval()
    _randomize(ours)
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    unet_params = {
        **TINY,
        "attention_resolutions": list(TINY["attention_resolutions"]),
        "channel_mult": list(TINY["channel_mult"]),
        "transformer_depth": 1,
        "use_linear_in_transformer": False,
    }
    original_config = {
        "model": {
            "params": {
                "unet_config": {"params": unet_params},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
            }
        }
    }
    config = create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    reference = UNet2DConditionModel(**config).eval()
    converted = convert_ldm_unet_checkpoint(checkpoint, config)
    reference.load_state_dict(converted, strict=True)
    return ours, reference


def _inputs(batch: int = 2, size: int = 8):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, size, size, generator=gen)
    t = torch.tensor([10, 700][:batch])
    context = torch.randn(batch, 7, 32, generator=gen)
    return x, t, context


def _residuals(unet: UNetModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Random residuals with the shapes of the 12 encoder skips and the middle output."""
    with torch.no_grad():
        t = torch.zeros(x.shape[0], dtype=torch.long)
        h, _, hs = unet._encode(x, t, torch.zeros(x.shape[0], 1, 32))
    shapes = [s.shape for s in hs] + [h.shape]
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(s, generator=gen) for s in shapes]


@pytest.mark.slow
def test_unet_matches_diffusers(unet_pair):
    ours, reference = unet_pair
    x, t, context = _inputs()
    with torch.no_grad():
        eps = ours(x, t, context)
        eps_ref = reference(x, t, encoder_hidden_states=context).sample
    assert eps.shape == x.shape
    assert (eps - eps_ref).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_unet_with_control_matches_diffusers(unet_pair):
    ours, reference = unet_pair
    x, t, context = _inputs()
    control = _residuals(ours, x)
    assert len(control) == 13
    with torch.no_grad():
        eps = ours(x, t, context, control=list(control))
        eps_ref = reference(
            x,
            t,
            encoder_hidden_states=context,
            down_block_additional_residuals=tuple(control[:12]),
            mid_block_additional_residual=control[12],
        ).sample
        eps_plain = ours(x, t, context)
    assert (eps - eps_ref).abs().max().item() <= 1e-4
    assert (eps - eps_plain).abs().max().item() > 1e-3  # the residuals do change the output


def test_control_list_is_not_consumed_and_count_checked(unet_pair):
    ours, _ = unet_pair
    x, t, context = _inputs(batch=1)
    control = _residuals(ours, x)
    with torch.no_grad():
        ours(x, t, context, control=control)
    assert len(control) == 13
    with pytest.raises(ValueError, match="13 control residuals"):
        ours(x, t, context, control=control[:12])


@pytest.mark.slow
def test_frozen_encoder_runs_without_graph():
    torch.manual_seed(0)
    unet = UNetModel(**TINY).train()
    _randomize(unet)
    unet.requires_grad_(False)
    x, t, context = _inputs(batch=1)
    x.requires_grad_(True)  # even a grad-requiring input must not pull the encoder into the graph
    control = [r.requires_grad_(True) for r in _residuals(unet, x.detach())]

    saved: list[torch.Tensor] = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        eps = unet(x, t, context, control=control)
    frozen_saved = sum(s.numel() for s in saved)
    eps.square().mean().backward()

    assert x.grad is None  # the encoder ran under no_grad
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in control)
    assert all(p.grad is None for p in unet.parameters())

    # With a trainable encoder the same call saves encoder activations too.
    unet.input_blocks.requires_grad_(True)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        eps = unet(x, t, context, control=control)
    assert sum(s.numel() for s in saved) > frozen_saved
    eps.square().mean().backward()
    assert unet.input_blocks[1][0].in_layers[2].weight.grad is not None


def test_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = UNetModel(**TINY).train()
    _randomize(plain)
    ckpt = UNetModel(**TINY, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t, context = _inputs(batch=1)
    for model in (plain, ckpt):
        model(x, t, context).square().mean().backward()
    g1 = plain.output_blocks[3][1].transformer_blocks[0].attn2.to_k.weight.grad
    g2 = ckpt.output_blocks[3][1].transformer_blocks[0].attn2.to_k.weight.grad
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_build_input_blocks_resblock_factory():
    replaced = []

    def factory(block_index, level, nr, in_ch, out_ch):
        if nr == 0:
            replaced.append((block_index, level, in_ch, out_ch))
            return torch.nn.Conv2d(in_ch, out_ch, 1)
        return None

    spec = UNetSpec(
        in_channels=4,
        model_channels=32,
        num_res_blocks=2,
        attention_resolutions=(4, 2, 1),
        channel_mult=(1, 2, 2, 2),
        num_heads=2,
        context_dim=32,
    )
    blocks, channels, ch, ds = build_input_blocks(spec, resblock_factory=factory)
    assert len(blocks) == 12 and len(channels) == 12
    assert [r[0] for r in replaced] == [1, 4, 7, 10]
    assert replaced[1] == (4, 1, 32, 64)
    assert (ch, ds) == (64, 8)


@pytest.mark.slow
def test_frozen_unet_checkpoints_its_decoder_for_the_adapter_gradient(monkeypatch):
    """A frozen UNet stays in eval mode, yet backpropagates to the residuals: use_checkpoint must apply there."""
    import grpose.diffusion.blocks as blocks

    torch.manual_seed(0)
    plain = UNetModel(**TINY).eval().requires_grad_(False)
    _randomize(plain)
    ckpt = UNetModel(**TINY, use_checkpoint=True).eval().requires_grad_(False)
    ckpt.load_state_dict(plain.state_dict())
    x, t, context = _inputs(batch=1)
    calls = []
    real = blocks.checkpoint
    monkeypatch.setattr(blocks, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    grads = []
    for model in (plain, ckpt):
        control = [r.requires_grad_(True) for r in _residuals(model, x)]
        model(x, t, context, control=control).square().mean().backward()
        grads.append([c.grad for c in control])
    assert calls, "the frozen decoder was not checkpointed"
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        calls.clear()
        ckpt(x, t, context)
    assert not calls  # inference never recomputes
