"""What the numbers were measured on: CPU, threads, GPU, versions, load; the GPU's bf16 peak for MFU."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peak FLOP/s by device name (vendor datasheets; SXM parts).
BF16_PEAK = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12))


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (the CPU numbers depend on them), where the OS has them."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """CPU model, threads, GPU, versions and the current load."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": None,
        "gpu_memory_gib": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, gpu_bf16_peak_flops=bf16_peak(props.name)
        )
    return info


def bf16_peak(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a known GPU, else None."""
    for key, peak in BF16_PEAK:
        if key.lower() in device_name.lower():
            return peak
    return None


def device_bf16_peak(device: torch.device) -> float | None:
    """``bf16_peak`` of a CUDA device; None on CPU (no MFU there)."""
    return bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
