"""Sampling section of the speed comparison: DDIM + CFG with the switches one by one, eps and image numerics."""

from __future__ import annotations

import contextlib
import functools
import statistics
import traceback
from typing import Any

import torch

from grpose.bench.estimate import HUMANART_EVAL_IMAGES
from grpose.bench.model import build_model, synthetic_batch
from grpose.bench.speed.recorder import Recorder, profile_to
from grpose.bench.speed.settings import PLAIN_OVERRIDES, SpeedSettings
from grpose.bench.speed.switches import rel_err, set_knn, undo_channels_last
from grpose.bench.timing import Stopwatch, free, peak_bytes, reset_peak, timed
from grpose.speed import compile_blocks


def bf16_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on any device (the smoke run's CPU too)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _sample_once(
    model: torch.nn.Module,
    *,
    hint: torch.Tensor,
    prompts: list[str],
    noise: torch.Tensor,
    device: torch.device,
    steps: int,
) -> None:
    with torch.no_grad(), bf16_autocast(device):
        model.sample(hint, prompts, noise=noise, num_steps=steps, guidance_scale=9.0)


def bench_sample(rec: Recorder, device: torch.device, settings: SpeedSettings) -> None:
    """The plain sampler, then each switch added cumulatively; eps and image numerics against plain bf16."""
    batch_size, image_size, steps = settings.sample_batch, settings.image_size, settings.sample_steps
    torch.manual_seed(0)
    model = build_model(settings.configs, list(PLAIN_OVERRIDES), device).eval()
    batch = synthetic_batch(batch_size, image_size, device)
    hint = model.batch_images(batch, "hint")
    prompts = batch["txt"]
    noise = torch.randn(batch_size, 4, image_size // 8, image_size // 8, device=device, generator=None)
    # fixed inputs of the eps check at the CFG batch (2 x batch, the shapes sampling compiles for): random latents,
    # timesteps spread over [1, 981], the prompts twice and the hints twice
    gen = torch.Generator(device="cpu").manual_seed(1)
    z_fix = torch.randn(2 * batch_size, 4, image_size // 8, image_size // 8, generator=gen).to(device)
    t_fix = torch.linspace(1, 981, 2 * batch_size).long().to(device)
    hint_fix = hint.repeat(2, 1, 1, 1)
    with torch.no_grad():
        ctx_fix = model.encode_text(list(prompts) * 2).float()

    def eps() -> torch.Tensor:
        with torch.no_grad(), bf16_autocast(device):
            return model.apply_model(z_fix, t_fix, ctx_fix, hint_fix).float()

    def short_sample() -> torch.Tensor:
        with torch.no_grad(), bf16_autocast(device):
            return model.sample(hint, prompts, noise=noise, num_steps=settings.check_steps).float()

    with torch.no_grad():
        eps_fp32 = model.apply_model(z_fix, t_fix, ctx_fix, hint_fix).float()
    eps_plain = eps()
    images_plain = short_sample()
    rec.add("numerics", {"check": "plain bf16 eps vs fp32 eps", "rel_err": rel_err(eps_plain, eps_fp32)})

    def measure(name: str, note: str = "") -> float | None:
        row: dict[str, Any] = {"variant": name, "batch": batch_size, "steps": steps, "note": note}
        try:
            run = functools.partial(_sample_once, model, hint=hint, prompts=prompts, noise=noise, device=device)
            watch = Stopwatch(device)
            run(steps=2)  # warm-up (and compilation) without 50 full steps
            row["warmup_s"] = watch.elapsed()
            reset_peak(device)
            times = timed(functools.partial(run, steps=steps), device, repeats=1, warmup=0)
            run_s = statistics.median(times)
            row.update(
                run_s=run_s,
                images_per_s=batch_size / run_s,
                peak_memory_gib=peak_bytes(device) / 2**30,
                eval_min=HUMANART_EVAL_IMAGES / (batch_size / run_s) / 60,
            )
            row["eps_rel_err"] = rel_err(eps(), eps_plain)  # after timing: compiled graphs exist by then
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc()
        free(device)
        rec.add("sample", row)
        return row.get("run_s")

    measure("plain (negative prompt once per run)")
    model.configure_speed(frozen_dtype="bf16")
    measure("+ frozen_dtype=bf16")
    set_knn(model, "auto")
    if measure("+ knn_backend=auto (triton on CUDA)") is None:
        set_knn(model, "torch")
    model.configure_speed(sample_cache_pose=True)
    measure("+ sample_cache_pose")
    model.configure_speed(cudnn_benchmark=True)
    best = measure("+ cudnn_benchmark")
    model.configure_speed(sample_cuda_graph=True)
    graphed = measure("+ sample_cuda_graph", note="each sample() call captures once")
    if graphed is None:
        model.configure_speed(sample_cuda_graph=False)
    best = graphed or best
    model.configure_speed(channels_last=True)
    cl = measure("+ channels_last")
    if cl is None or (best is not None and cl > best):
        undo_channels_last(model)
        rec.add("sample", {"variant": "channels_last reverted (slower or failed)"})
    if rec.over_budget(reserve_s=220):
        rec.add("sample", {"variant": "+ compile_blocks", "error": "skipped: time budget"})
    else:
        compile_blocks(model, backend=settings.compile_backend)
        measure("+ compile_blocks", note="warmup_s includes compilation")
    profile_to(rec, "one CFG denoiser step b8 (batch 16), final variant, eager launches", eps, device)
    try:
        images_fast = short_sample()
        rec.add(
            "numerics",
            {
                "check": "images of a 10-step sample, all switches vs plain bf16",
                "rel_err": rel_err(images_fast, images_plain),
                "max_abs": float((images_fast - images_plain).abs().max()),
                "plain_std": float(images_plain.std()),
            },
        )
    except Exception as err:  # noqa: BLE001
        rec.add("numerics", {"check": "images", "error": f"{type(err).__name__}: {err}"})
        traceback.print_exc()
