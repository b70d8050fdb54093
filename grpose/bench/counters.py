"""Counts taken during one call: FLOPs, dispatched aten ops and host-device synchronisations."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grpose.bench.timing import sync


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched below autograd (forward and backward); most are one kernel launch each."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_flops(fn: Callable[[], Any]) -> tuple[int | None, int | None]:
    """(FLOPs, dispatched aten ops) of one call; the op count shows how launch-bound a step is."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, OpCounter() as ops:
            fn()
    except Exception as err:  # noqa: BLE001 - a counting failure must not sink the timing numbers
        print(f"  flop counting failed: {type(err).__name__}: {err}", flush=True)
        return None, None
    return int(counter.get_total_flops()), ops.count


def host_syncs(fn: Callable[[], Any], device: torch.device) -> dict[str, Any] | None:
    """Host-device synchronisations during ``fn`` (CUDA sync debug mode), with the Python sites that caused them."""
    if device.type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    return {"count": len(sites), "sites": sorted(set(sites))}
