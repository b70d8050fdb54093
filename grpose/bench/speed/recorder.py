"""Rows of the speed comparison: printed as they come, the JSON rewritten after each; profiler tables beside it."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from grpose.bench.machine import machine_info
from grpose.bench.timing import Stopwatch, sync


def fmt_value(value: Any) -> str:
    """Floats to 4 significant digits, anything else as str."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Recorder:
    """Collects rows per section, prints each and rewrites the JSON file after every row."""

    def __init__(self, out: Path | None, budget_s: float) -> None:
        self.out, self.budget_s, self.clock = out, budget_s, Stopwatch()
        self.compile_train = True
        self.result: dict[str, Any] = {"machine": machine_info(), "train": [], "sample": [], "knn": [], "numerics": []}

    def elapsed(self) -> float:
        return self.clock.elapsed()

    def over_budget(self, reserve_s: float = 0.0) -> bool:
        return self.elapsed() + reserve_s > self.budget_s

    def add(self, section: str, row: dict[str, Any]) -> None:
        row = {**row, "t_s": round(self.elapsed(), 1)}
        self.result[section].append(row)
        print(f"[{section}] " + " ".join(f"{k}={fmt_value(v)}" for k, v in row.items() if k != "times_s"), flush=True)
        self.save()

    def save(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.result, indent=1, default=str) + "\n")


def profile_to(rec: Recorder, name: str, fn: Callable[[], Any], device: torch.device, rows: int = 25) -> None:
    """torch.profiler table of one call of ``fn`` (top kernels by device time) written next to the JSON."""
    if rec.out is None or device.type != "cuda" or rec.over_budget(reserve_s=30):
        return
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            sync(device)
        events = prof.key_averages()
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
        table = events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70)
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernelEx", "cuLaunchKernel"))
        text = f"== {name}: device kernels {kernel_us / 1e3:.1f} ms, {launches} kernel launches\n{table}\n"
        with open(rec.out.parent / "speed_profile.txt", "a") as f:
            f.write(text)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
