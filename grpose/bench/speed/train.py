"""Training-step section of the speed comparison: the switches one by one, the gradient numerics, the pose loss."""

from __future__ import annotations

import functools
import statistics
import traceback
from typing import Any

import torch

from grpose.bench.counters import count_flops
from grpose.bench.machine import device_bf16_peak
from grpose.bench.model import build_model, forward_backward, synthetic_batch, train_step
from grpose.bench.speed.recorder import Recorder, profile_to
from grpose.bench.speed.settings import PLAIN_OVERRIDES, SpeedSettings
from grpose.bench.speed.switches import rel_err, set_adapter_checkpoint, set_knn, undo_channels_last
from grpose.bench.timing import Stopwatch, free, peak_bytes, reset_peak, timed
from grpose.speed import compile_blocks


def bench_train(rec: Recorder, device: torch.device, settings: SpeedSettings) -> None:
    """The plain step, then each switch added cumulatively; gradient numerics of the plain and final paths."""
    batch_size, repeats, warmup = settings.train_batch, settings.train_repeats, settings.train_warmup
    torch.manual_seed(0)
    model = build_model(settings.configs, list(PLAIN_OVERRIDES), device).train()
    batch = synthetic_batch(batch_size, settings.image_size, device)
    peak_flops = device_bf16_peak(device)
    flops: dict[str, int | None] = {}

    def measure(name: str, note: str = "") -> float | None:
        optimizer = model.configure_optimizers()  # fresh state: a memory-format change must not mix layouts
        step = functools.partial(train_step, model=model, optimizer=optimizer, batch=batch, device=device)
        row: dict[str, Any] = {"variant": name, "batch": batch_size, "note": note}
        try:
            reset_peak(device)
            watch = Stopwatch(device)
            for _ in range(warmup):
                step()
            row["warmup_s"] = watch.elapsed()
            times = timed(step, device, repeats=repeats, warmup=0)
            row.update(step_s=statistics.median(times), peak_memory_gib=peak_bytes(device) / 2**30, times_s=times)
            if "model" not in flops:
                optimizer.zero_grad(set_to_none=True)
                losses = functools.partial(forward_backward, model, batch, device)
                flops["model"], flops["aten_ops"] = count_flops(losses)
                row["aten_ops"] = flops["aten_ops"]
            row["model_flops"] = flops["model"]
            if flops["model"]:
                row["achieved_tflops"] = flops["model"] / row["step_s"] / 1e12
                row["mfu"] = flops["model"] / row["step_s"] / peak_flops if peak_flops else None
        except Exception as err:  # noqa: BLE001 - one variant failing must not lose the others
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc()
        del optimizer
        model.zero_grad(set_to_none=True)
        free(device)
        rec.add("train", row)
        return row.get("step_s")

    def grads(autocast: bool = True) -> torch.Tensor:
        """Adapter gradient of one fixed-seed forward/backward (same t and noise in every variant)."""
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = sum(model.compute_losses(batch).values()).mean()
        loss.backward()
        flat = torch.cat([p.grad.flatten().float() for p in model.control_model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        return flat

    grads_plain = grads()
    # the scale of "same numbers" for a gradient: plain bf16 again (nondeterministic atomics, near-tie argmaxes)
    # and plain fp32 (no autocast) against plain bf16
    rec.add("numerics", {"check": "adapter gradient, plain bf16 run twice", "rel_err": rel_err(grads(), grads_plain)})
    if settings.fp32_check:
        fp32 = grads(autocast=False)
        check = {"check": "adapter gradient, plain fp32 vs plain bf16", "rel_err": rel_err(fp32, grads_plain)}
        rec.add("numerics", check)
        del fp32
    set_adapter_checkpoint(model, True)
    measure("plain, adapter checkpointing (the old default)")
    set_adapter_checkpoint(model, False)
    base = measure("plain, no checkpointing")
    model.configure_speed(frozen_dtype="bf16")
    frozen = measure("+ frozen_dtype=bf16")
    set_knn(model, "auto")
    knn = measure("+ knn_backend=auto (triton on CUDA)")
    if knn is None:
        set_knn(model, "torch")
    model.configure_speed(cudnn_benchmark=True)
    best = measure("+ cudnn_benchmark") or knn
    model.configure_speed(channels_last=True)
    cl = measure("+ channels_last")
    if cl is None or (best is not None and cl > best):
        undo_channels_last(model)
        rec.add("train", {"variant": "channels_last reverted (slower or failed)"})
    if rec.over_budget(reserve_s=60) or not rec.compile_train:
        rec.add("train", {"variant": "+ compile_blocks", "error": "skipped: time budget or --no_compile_train"})
    else:
        compile_blocks(model, backend=settings.compile_backend)
        measure("+ compile_blocks", note="warmup_s includes compilation")
    optimizer = model.configure_optimizers()
    step = functools.partial(train_step, model=model, optimizer=optimizer, batch=batch, device=device)
    profile_to(rec, "training step b6, final variant", step, device)
    del optimizer, step
    try:
        rec.add(
            "numerics",
            {"check": "adapter gradient, all switches vs plain bf16", "rel_err": rel_err(grads(), grads_plain)},
        )
    except Exception as err:  # noqa: BLE001
        rec.add("numerics", {"check": "adapter gradient", "error": f"{type(err).__name__}: {err}"})
        traceback.print_exc()
    del base, frozen, grads_plain


def bench_train_poseloss(rec: Recorder, device: torch.device, settings: SpeedSettings) -> None:
    """The perception-loss step with the eager switches: its peak memory (the VAE decoder is checkpointed)."""
    batch_size = settings.train_batch
    configs = [*settings.configs, *settings.pose_loss_configs]
    overrides = [
        *settings.pose_loss_overrides,
        *PLAIN_OVERRIDES,
        "model.params.frozen_dtype=bf16",
        "model.params.adapter.params.knn_backend=auto",
        "model.params.adapter.params.use_checkpoint=false",
    ]
    row: dict[str, Any] = {"variant": "pose loss, frozen bf16 + triton kNN, no checkpointing", "batch": batch_size}
    try:
        torch.manual_seed(0)
        model = build_model(configs, overrides, device).train()
        batch = synthetic_batch(batch_size, settings.image_size, device)
        optimizer = model.configure_optimizers()
        step = functools.partial(train_step, model=model, optimizer=optimizer, batch=batch, device=device)
        reset_peak(device)
        step()
        times = timed(step, device, repeats=settings.pose_loss_repeats, warmup=0)
        row.update(step_s=statistics.median(times), peak_memory_gib=peak_bytes(device) / 2**30)
    except Exception as err:  # noqa: BLE001
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        traceback.print_exc()
    free(device)
    rec.add("train", row)
