"""kNN section of the speed comparison: dense_knn, torch against the Triton kernel, time and agreement."""

from __future__ import annotations

import functools
import statistics
import traceback
from typing import Any

import torch

from grpose.bench.speed.recorder import Recorder
from grpose.bench.speed.settings import SpeedSettings
from grpose.bench.timing import free, timed


def bench_knn(rec: Recorder, device: torch.device, settings: SpeedSettings) -> None:
    """dense_knn at the PGI level sizes of a CFG sampling step (batch 16): torch vs triton, time and agreement."""
    from grpose.graph.knn import dense_knn, resolve_backend

    batch = settings.knn_batch
    for channels, size in settings.knn_levels:
        x = torch.randn(batch, channels, size * size, device=device, dtype=torch.bfloat16)
        row: dict[str, Any] = {"channels": channels, "nodes": size * size, "batch": batch}
        try:
            ref = dense_knn(x, 9)
            times = timed(functools.partial(dense_knn, x, 9), device, repeats=5, warmup=1)
            row["torch_ms"] = 1e3 * statistics.median(times)
            if resolve_backend("auto", device) == "triton":
                for precision in ("ieee", "tf32x3"):
                    fn = functools.partial(dense_knn, x, 9, backend="triton", precision=precision)
                    out = fn()
                    row[f"triton_{precision}_ms"] = 1e3 * statistics.median(timed(fn, device, repeats=5, warmup=1))
                    row[f"triton_{precision}_agree"] = float((out == ref).float().mean())
                    row[f"triton_{precision}_same_set"] = float(
                        (out.sort(-1).values == ref.sort(-1).values).all(-1).float().mean()
                    )
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc()
        rec.add("knn", row)
        free(device)
