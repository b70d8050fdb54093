"""Sampling section: DDIM with CFG (scale 9, negative prompt) + VAE decode, eager and optionally compiled."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from grpose.bench.counters import host_syncs
from grpose.bench.model import autocast, build_model, synthetic_batch
from grpose.bench.report import row_text
from grpose.bench.suites import Suite
from grpose.bench.timing import Stopwatch, free, peak_bytes, reset_peak, timed

# One run per batch size: a 50-step run is already an average over 50 UNet calls.
SAMPLE_REPEATS = 1


def sample_section(suite: Suite, compile_model: bool) -> list[dict[str, Any]]:
    """The suite's sampling rows; ``compile_model`` adds the compiled variant where the suite allows it."""
    device = torch.device(suite.device)
    rows = bench_sample(
        device=device,
        config_paths=list(suite.configs),
        batch_sizes=suite.sample_batch_sizes,
        image_size=suite.image_size,
        num_steps=suite.sample_steps,
        repeats=SAMPLE_REPEATS,
        warmup=suite.sample_warmup,
        compile_model=compile_model and suite.compile,
        label={"model": suite.model, "image_size": suite.image_size},
    )
    free(device)
    return rows


def _sample(
    model: torch.nn.Module,
    *,
    hint: torch.Tensor,
    prompts: list[str],
    noise: torch.Tensor,
    device: torch.device,
    steps: int,
) -> None:
    """One sampling run (DDIM ``steps`` + decode) under ``autocast``."""
    with autocast(device):
        model.sample(hint, prompts, noise=noise, num_steps=steps, guidance_scale=9.0)


def bench_sample(
    *,
    device: torch.device,
    config_paths: Sequence[Path],
    batch_sizes: Sequence[int],
    image_size: int,
    num_steps: int,
    repeats: int,
    warmup: int,
    compile_model: bool,
    label: dict[str, Any],
) -> list[dict[str, Any]]:
    """DDIM ``num_steps`` with CFG (scale 9, negative prompt) + VAE decode; eager and optionally compiled."""
    torch.manual_seed(0)
    model = build_model(config_paths, (), device)
    model.eval()
    rows = []
    for variant in ("eager", "compiled") if compile_model else ("eager",):
        if variant == "compiled":
            try:
                model.unet.compile()
                model.control_model.compile()
            except Exception as err:  # noqa: BLE001 - report and go on without compile
                rows.append({**label, "variant": "compiled", "error": f"{type(err).__name__}: {err}"})
                break
        for batch_size in batch_sizes:
            row: dict[str, Any] = {**label, "variant": variant, "batch": batch_size, "steps": num_steps}
            batch = synthetic_batch(batch_size, image_size, device)
            hint = model.batch_images(batch, "hint")
            noise = torch.randn(batch_size, 4, image_size // 8, image_size // 8, device=device)

            run = functools.partial(_sample, model, hint=hint, prompts=batch["txt"], noise=noise, device=device)

            try:
                watch = Stopwatch(device)
                for _ in range(warmup):  # a short run warms kernels (and compiles) without 50 full steps
                    run(steps=min(num_steps, 2))
                row["warmup_s"] = watch.elapsed()
                reset_peak(device)
                times = timed(functools.partial(run, steps=num_steps), device, repeats=repeats, warmup=0)
                peak = peak_bytes(device)
                run_s = statistics.median(times)
                syncs = host_syncs(functools.partial(run, steps=min(num_steps, 2)), device)
                if syncs is not None:
                    row.update(host_syncs=syncs["count"], host_sync_sites=syncs["sites"])
                row.update(
                    run_s=run_s,
                    images_per_s=batch_size / run_s,
                    s_per_image=run_s / batch_size,
                    peak_memory_gib=peak / 2**30,
                    times_s=times,
                )
            except torch.OutOfMemoryError as err:
                row["error"] = f"out of memory: {str(err).splitlines()[0]}"
            except Exception as err:  # noqa: BLE001 - compile failures are reported, not fatal
                if variant != "compiled":
                    raise
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            rows.append(row)
            print("  " + row_text(row), flush=True)
            del batch, hint, noise
            free(device)
            if "error" in row and variant == "compiled":
                break
    return rows
