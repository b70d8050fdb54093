"""Speed switches against the plain path on the tiny model: frozen dtype, channels-last, pose cache,
negative-prompt cache, regional compile, fused kNN kernel (Triton interpreter)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpose.config import instantiate, load_config
from grpose.speed import compile_blocks, parse_dtype

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/grpose/tiny.yaml")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    model = instantiate(load_config(TINY).model, "model")
    with torch.no_grad():
        for p in model.parameters():  # zero convs and outputs: small random values so every path is exercised
            if p.ndim > 1 and not bool(p.any()):
                p.normal_(0.0, 0.05)
    return model.eval()


def inputs(batch: int = 2, size: int = 64, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, size // 8, size // 8, generator=gen)
    t = torch.tensor([10, 700][:batch])
    ctx = torch.randn(batch, 77, 32, generator=gen)
    hint = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    return z, t, ctx, hint


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("fp32") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int8")


def test_frozen_dtype_matches_the_autocast_path(plain):
    fast = copy.deepcopy(plain).configure_speed(frozen_dtype="bf16")
    assert fast.unet.input_blocks[1][0].in_layers[2].weight.dtype is torch.bfloat16
    assert fast.first_stage_model.encoder.conv_in.weight.dtype is torch.bfloat16
    assert all(p.dtype is torch.float32 for p in fast.control_model.parameters())  # trainable: fp32 master weights
    z, t, ctx, hint = inputs()
    with torch.no_grad(), bf16_autocast():
        ref = plain.apply_model(z, t, ctx, hint).float()
        out = fast.apply_model(z, t, ctx, hint).float()
        images = (torch.rand(2, 3, 64, 64) * 2 - 1).float()
        z_ref = plain.encode_images(images, sample=False).float()
        z_out = fast.encode_images(images, sample=False).float()
        text_ref = plain.encode_text(["a dancer"]).float()
        text_out = fast.encode_text(["a dancer"]).float()
    assert rel_err(out, ref) < 2e-2  # bf16 rounding of the norm weights only; matmuls see the same bf16 weights
    assert rel_err(z_out, z_ref) < 2e-2 and rel_err(text_out, text_ref) < 2e-2


def test_frozen_dtype_training_step_reaches_the_adapter(plain):
    fast = copy.deepcopy(plain).configure_speed(frozen_dtype="bf16").train()
    z, t, ctx, hint = inputs()
    batch = {
        "jpg": torch.rand(2, 64, 64, 3) * 2 - 1,
        "hint": hint.permute(0, 2, 3, 1),
        "txt": ["a", "b"],
    }
    with bf16_autocast():
        loss = sum(fast.compute_losses(batch).values()).mean()
    loss.backward()
    grads = [p.grad for p in fast.control_model.parameters()]
    assert torch.isfinite(loss) and all(g is not None for g in grads)
    assert all(p.grad is None for p in fast.unet.parameters())


def test_channels_last_matches_the_plain_path(plain):
    fast = copy.deepcopy(plain).configure_speed(channels_last=True)
    assert fast.unet.input_blocks[1][0].in_layers[2].weight.is_contiguous(memory_format=torch.channels_last)
    z, t, ctx, hint = inputs()
    with torch.no_grad():
        err = rel_err(fast.apply_model(z, t, ctx, hint), plain.apply_model(z, t, ctx, hint))
    assert err < 3e-4, err  # fp32; NHWC convolutions sum in another order


def test_pose_cache_and_negative_prompt_cache_match_the_plain_sampler(plain):
    fast = copy.deepcopy(plain).configure_speed(sample_cache_pose=True)
    _, _, _, hint = inputs()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = plain.sample(hint, ["a", "b"], noise=noise, num_steps=3)
    calls = []
    original = fast.encode_text
    fast.encode_text = lambda prompts: calls.append(list(prompts)) or original(prompts)
    out = fast.sample(hint, ["a", "b"], noise=noise, num_steps=3)
    fast.sample(hint, ["c", "d"], noise=noise, num_steps=3)
    assert rel_err(out, ref) < 1e-5
    negatives = [c for c in calls if c == [fast.negative_prompt]]
    assert len(negatives) == 1  # the negative prompt is encoded once per run, not once per batch


def test_pose_condition_is_the_pose_branch_of_each_pgi(plain):
    adapter = plain.control_model
    z, t, ctx, hint = inputs()
    with torch.no_grad():
        cond = adapter.pose_condition(hint)
        assert sorted(cond) == adapter.inject_layers
        ref = adapter(z, t, ctx, hint)
        out = adapter(z, t, ctx, None, pose_cond=cond)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_regional_compile_traces_every_block_and_keeps_the_numbers(plain):
    import torch._dynamo

    torch._dynamo.reset()
    fast = copy.deepcopy(plain)
    count = compile_blocks(fast, backend="eager")  # dynamo tracing only: inductor codegen is the GPU's job
    assert count > 20
    z, t, ctx, hint = inputs()
    with torch.no_grad():
        out = fast.apply_model(z, t, ctx, hint)
        ref = plain.apply_model(z, t, ctx, hint)
    assert rel_err(out, ref) < 1e-5
    torch._dynamo.reset()


KNN_SCRIPT = r"""
import sys, torch, numpy as np
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests")
from grpose.graph.knn import dense_knn
from test_graph_knn import brute_force_knn
torch.manual_seed(0)
for shape, k, d in [((3, 16, 70), 9, 1), ((2, 10, 50), 4, 3), ((2, 40, 130), 9, 1)]:
    x = torch.randn(*shape)
    for precision in ("ieee", "tf32x3"):
        np.testing.assert_array_equal(dense_knn(x, k, d, backend="triton", precision=precision).numpy(),
                                      brute_force_knn(x, k, d))
    np.testing.assert_array_equal(dense_knn(x, k, d, backend="triton").numpy(), dense_knn(x, k, d).numpy())
channels, nodes = 8, 60
protos = torch.cat([torch.eye(channels), -torch.eye(channels)])
x = protos[torch.randint(0, 16, (2, nodes))].transpose(1, 2) * torch.rand(2, 1, nodes).add(0.5)
for k in (4, 9, 13):
    np.testing.assert_array_equal(dense_knn(x, k, backend="triton").numpy(), brute_force_knn(x, k))
dup = torch.randn(1, 5, 10).repeat(1, 1, 3)
np.testing.assert_array_equal(dense_knn(dup, 3, backend="triton").numpy(), brute_force_knn(dup, 3))
print("ok")
"""


def test_triton_knn_kernel_matches_brute_force_with_exact_ties():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", KNN_SCRIPT, str(ROOT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_knn_backend_names_are_checked():
    from grpose.graph.knn import dense_knn, resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="knn backend"):
        dense_knn(torch.randn(1, 4, 20), 3, backend="cuda")


def test_every_switch_at_once_stays_within_bf16_of_the_plain_path(plain):
    import torch._dynamo

    torch._dynamo.reset()
    fast = copy.deepcopy(plain).configure_speed(
        frozen_dtype="bf16",
        channels_last=True,
        compile_blocks=False,
        sample_cache_pose=True,
        sample_cuda_graph=True,  # CUDA only: a no-op on CPU
        knn_backend="auto",
    )
    compile_blocks(fast, backend="eager")
    _, _, _, hint = inputs()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with bf16_autocast():
        ref = plain.sample(hint, ["a", "b"], noise=noise, num_steps=3).float()
        out = fast.sample(hint, ["a", "b"], noise=noise, num_steps=3).float()
    fp32 = plain.sample(hint, ["a", "b"], noise=noise, num_steps=3)
    # bf16 tolerance = how far the plain bf16 sampler is from fp32 (CFG 9 amplifies eps errors; ~14 % here)
    err, tolerance = rel_err(out, ref), rel_err(fp32, ref)
    assert err < 1.5 * tolerance, (err, tolerance)
    torch._dynamo.reset()


def test_cpu_bf16_attention_runs_in_fp32_and_returns_bf16():
    """Under CPU bf16 autocast the attention product runs in fp32 (PyTorch's CPU bf16 attention is slower there,
    docs/lab.md §6): the result matches fp32 attention of the same bf16 projections, and gradients flow."""
    from grpose.diffusion.attention import CrossAttention

    torch.manual_seed(0)
    attention = CrossAttention(query_dim=32, context_dim=16, heads=2, dim_head=16)
    x = torch.randn(2, 64, 32, requires_grad=True)
    context = torch.randn(2, 7, 16)
    with bf16_autocast():
        out = attention(x, context)
    assert out.dtype is torch.bfloat16
    with torch.no_grad():
        q = attention._split(attention.to_q(x).bfloat16()).float()
        k = attention._split(attention.to_k(context).bfloat16()).float()
        v = attention._split(attention.to_v(context).bfloat16()).float()
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 64, 32)
        ref = attention.to_out(ref.bfloat16().float())
    assert rel_err(out.detach().float(), ref) < 2e-2
    out.float().square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and bool(x.grad.any())


def test_precision_is_kept_where_it_runs_well_and_frozen_dtype_follows_it(monkeypatch):
    import train
    from grpose import speed

    config = load_config(str(ROOT / "configs/lab/grpose.yaml"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert train.resolve_precision("bf16-mixed", "cpu", config) == "bf16-mixed"
    assert config.model.params.frozen_dtype == "bf16"
    assert train.resolve_precision("16-mixed", "cpu", config) == "32-true"  # fp16 autocast: GPUs only
    assert config.model.params.frozen_dtype is None  # 32-bit runs keep the frozen base in fp32

    config = load_config(str(ROOT / "configs/lab/grpose.yaml"))
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)  # bf16 emulated: slower than fp32
    assert train.resolve_precision("bf16-mixed", "auto", config) == "32-true"
    assert config.model.params.frozen_dtype is None
    assert train.resolve_precision(32, "cpu", config) == "32"


def test_autocast_for_follows_the_lightning_precision_names():
    from grpose.speed import autocast_for

    with autocast_for("bf16-mixed", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
    with autocast_for("32-true", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
