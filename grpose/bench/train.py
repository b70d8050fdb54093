"""Training-step section: compute_losses + backward + AdamW step, with and without pose loss and checkpointing."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from grpose.bench.counters import count_flops, host_syncs
from grpose.bench.machine import device_bf16_peak
from grpose.bench.model import (
    CHECKPOINT_OVERRIDES,
    NO_CHECKPOINT_OVERRIDES,
    build_model,
    forward_backward,
    synthetic_batch,
    train_step,
)
from grpose.bench.report import row_text
from grpose.bench.suites import Suite
from grpose.bench.timing import free, peak_bytes, reset_peak, timed


def train_section(suite: Suite) -> list[dict[str, Any]]:
    """One model per (pose loss, checkpointing) variant of the suite, each timed at every batch size."""
    device = torch.device(suite.device)
    rows: list[dict[str, Any]] = []
    model_flops: dict[tuple[int, bool], int] = {}
    for pose_loss, checkpointing in suite.train_variants:
        configs = list(suite.configs) + (list(suite.pose_loss_configs) if pose_loss else [])
        overrides = list(CHECKPOINT_OVERRIDES if checkpointing else NO_CHECKPOINT_OVERRIDES)
        if pose_loss:
            overrides += list(suite.pose_loss_overrides)
        label = {
            "model": suite.model,
            "pose_loss": pose_loss,
            "checkpointing": checkpointing,
            "precision": suite.precision,
        }
        rows += bench_train(
            device=device,
            config_paths=configs,
            overrides=overrides,
            batch_sizes=suite.train_batch_sizes,
            image_size=suite.image_size,
            repeats=suite.repeats,
            warmup=suite.warmup,
            label=label,
            model_flops=model_flops,
        )
        free(device)
    return rows


def bench_train(
    *,
    device: torch.device,
    config_paths: Sequence[Path],
    overrides: Sequence[str],
    batch_sizes: Sequence[int],
    image_size: int,
    repeats: int,
    warmup: int,
    label: dict[str, Any],
    model_flops: dict[tuple[int, bool], int],
) -> list[dict[str, Any]]:
    """compute_losses + backward + AdamW step of one model config at each batch size.

    ``model_flops`` caches the FLOPs counted without activation checkpointing per (batch, pose loss), so MFU of a
    checkpointed run uses model FLOPs, not the recomputation.
    """
    rows = []
    torch.manual_seed(0)
    model = build_model(config_paths, overrides, device)
    model.train()
    optimizer = model.configure_optimizers()
    peak_flops = device_bf16_peak(device)
    for batch_size in batch_sizes:
        row: dict[str, Any] = {**label, "batch": batch_size, "image_size": image_size}
        batch = synthetic_batch(batch_size, image_size, device)

        losses = functools.partial(forward_backward, model, batch, device)
        step = functools.partial(train_step, model=model, optimizer=optimizer, batch=batch, device=device)

        try:
            reset_peak(device)
            times = timed(step, device, repeats=repeats, warmup=warmup)
            peak = peak_bytes(device)
            optimizer.zero_grad(set_to_none=True)
            key = (batch_size, bool(label.get("pose_loss")))
            # on GPU a checkpointed run reuses the model FLOPs of its plain twin (saves a slow counted step)
            recount = not (device.type == "cuda" and label.get("checkpointing") and key in model_flops)
            flops, aten_ops = count_flops(losses) if recount else (None, None)
            optimizer.zero_grad(set_to_none=True)
            if not label.get("checkpointing") and flops is not None:
                model_flops[key] = flops
            step_s = statistics.median(times)
            syncs = host_syncs(step, device) if batch_size == batch_sizes[0] else None
            if syncs is not None:
                row.update(host_syncs=syncs["count"], host_sync_sites=syncs["sites"])
            row.update(
                step_s=step_s,
                samples_per_s=batch_size / step_s,
                peak_memory_gib=peak / 2**30,
                step_flops=flops,
                aten_ops=aten_ops,
                model_flops=model_flops.get(key, flops),
                times_s=times,
            )
            if row["model_flops"]:
                row["achieved_tflops"] = row["model_flops"] / step_s / 1e12
                row["mfu"] = row["model_flops"] / step_s / peak_flops if peak_flops else None
        except torch.OutOfMemoryError as err:
            row["error"] = f"out of memory: {str(err).splitlines()[0]}"
            optimizer.zero_grad(set_to_none=True)
        del batch
        free(device)
        rows.append(row)
        print("  " + row_text(row), flush=True)
    return rows  # the caller frees the device memory once model and optimizer are out of scope
