"""Timing and memory of benchmark runs: device sync, timed repeats, a stopwatch, peak memory, freeing memory.

Peak memory, two ways. ``reset_peak``/``peak_bytes``: the CUDA allocator's peak, or on CPU the process's peak RSS
(VmHWM, reset through /proc/self/clear_refs). ``extra_peak_bytes``: the peak of the bytes allocated *during* one
call on top of what existed before; on CUDA ``max_memory_allocated`` minus the allocation at the start, on CPU (no
allocator high-water mark) the call runs once under ``torch.profiler`` with ``profile_memory=True``, which records
every allocation (+bytes) and free (-bytes) with a timestamp; the peak is the maximum of their running sum in time
order.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CPU = torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, *, repeats: int, warmup: int) -> list[float]:
    """Wall times of ``repeats`` calls after ``warmup`` calls; the device is synchronised only around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        watch = Stopwatch(device)
        fn()
        times.append(watch.elapsed())
    return times


class Stopwatch:
    """Wall seconds since it was made; ``elapsed`` synchronises the device first."""

    def __init__(self, device: torch.device = CPU) -> None:
        self.device = device
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.start


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator peak, or the process's peak RSS on CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_bytes(device: torch.device) -> int:
    """Peak bytes since the last ``reset_peak``."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def extra_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak extra bytes allocated while ``fn`` runs (see the module docstring for the method)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running, peak = 0, 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def free(device: torch.device) -> None:
    """Collect garbage and return cached CUDA blocks, so one measurement does not weigh on the next."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
