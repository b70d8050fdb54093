"""Benchmark the GCN block (docs/design.md §6, memory): ours vs a straightforward gather-based EdgeConv.

    python -m grpose.bench.graph [--channels 320 --size 64 --batch 2 --k 9 --device cpu --out FILE]

Peak memory is the peak of the bytes allocated *during* one forward+backward on top of what existed before
(inputs and parameters excluded; ``timing.extra_peak_bytes`` says how). Times are the median of ``repeats`` runs
without the profiler, after ``warmup`` runs, the implementations interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grpose.bench.report import row_text
from grpose.bench.suites import Suite
from grpose.bench.timing import extra_peak_bytes, free, timed
from grpose.graph.convs import naive_edge_conv
from grpose.graph.gcn import GCN
from grpose.graph.knn import dense_knn


def graph_section(suite: Suite) -> list[dict[str, Any]]:
    """The GCN block at each of the suite's levels against the gather-based EdgeConv (forward + backward)."""
    device = torch.device(suite.device)
    settings = suite.graph
    rows = []
    for channels, size in settings.levels:
        res = benchmark_gcn(
            channels=channels,
            size=size,
            batch=settings.batch,
            device=device,
            repeats=settings.repeats,
            warmup=settings.warmup,
        )
        row = {
            "channels": channels,
            "size": size,
            "batch": settings.batch,
            "ours_s": res["ours"]["time_s"],
            "naive_s": res["naive"]["time_s"],
            "ours_peak_mib": res["ours"]["peak_mib"],
            "naive_peak_mib": res["naive"]["peak_mib"],
            "time_ratio": res["time_ratio_ours_over_naive"],
            "peak_ratio": res["peak_ratio_ours_over_naive"],
            "max_abs_diff": res.get("max_abs_diff_vs_naive"),
        }
        rows.append(row)
        print("  " + row_text(row), flush=True)
        free(device)
    return rows


def naive_knn(y: torch.Tensor, k: int) -> torch.Tensor:
    """ViG-style kNN: the full (B, N, N) distance matrix at once, float topk (no chunking, no tie-break)."""
    with torch.no_grad():
        f = F.normalize(y.detach(), dim=1).transpose(1, 2)  # (B, N, C)
        sq = f.pow(2).sum(-1, keepdim=True)  # (B, N, 1)
        dist = sq - 2 * f @ f.transpose(1, 2) + sq.transpose(1, 2)  # (B, N, N)
        return dist.topk(k, dim=-1, largest=False).indices  # (B, N, k)


class NaiveGCN(nn.Module):
    """The straightforward GCN: shares the parameters of ``gcn`` but materialises the (B, 2C, N, k) edges."""

    def __init__(self, gcn: GCN, chunked_knn: bool = False) -> None:
        super().__init__()
        self.gcn, self.chunked_knn = gcn, chunked_knn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        y = self.gcn.conv1(x).reshape(batch, channels, height * width)  # (B, C, N)
        k = self.gcn.graph_conv.kernel_size
        idx = dense_knn(y, k) if self.chunked_knn else naive_knn(y, k)
        out = naive_edge_conv(self.gcn.graph_conv.gconv.nn[0], y, idx)  # (B, C, N)
        return out.reshape(batch, channels, height, width) + x


def _step(module: nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.square().mean().backward()
    del out


def benchmark_gcn(
    *,
    channels: int = 320,
    size: int = 64,
    batch: int = 2,
    k: int = 9,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    warmup: int = 1,
    conv: str = "edge",
    chunk_size: int | None = None,
    seed: int = 0,
) -> dict:
    """Forward+backward time (s) and peak memory (bytes) of our GCN vs the straightforward gather version.

    Returns a dict with the setting, per-implementation ``{time_s, peak_bytes}`` for ``ours``, ``naive``
    (full N x N distance matrix + gathered (B, 2C, N, k) edges, as in ViG/the release) and
    ``naive_chunked_knn`` (same edges, our chunked kNN), and the ratios ours/naive.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    gcn = GCN(channels, kernel_size=k, conv=conv, chunk_size=chunk_size).to(device)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    impls: dict[str, nn.Module] = {"ours": gcn}
    if conv == "edge":
        impls["naive"] = NaiveGCN(gcn)
        impls["naive_chunked_knn"] = NaiveGCN(gcn, chunked_knn=True)
    results: dict = {
        "setting": {"channels": channels, "size": size, "batch": batch, "k": k, "conv": conv, "device": str(device)},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if conv == "edge":  # the two must agree before their cost is compared
        with torch.no_grad():
            gcn.eval()
            diff = (impls["ours"](x) - impls["naive_chunked_knn"](x)).abs().max().item()
            gcn.train()
        results["max_abs_diff_vs_naive"] = diff
    runs: dict[str, Callable[[], None]] = {}
    for name, module in impls.items():

        def run(module: nn.Module = module) -> None:
            _step(module, x)
            x.grad = None

        runs[name] = run
        run()  # warm caches before measuring memory
        peak = extra_peak_bytes(run, device)
        results[name] = {"peak_bytes": peak, "peak_mib": peak / 2**20}
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so background load hits every implementation alike
        for name, run in runs.items():
            times[name] += timed(run, device, repeats=1, warmup=0)
    for name, values in times.items():
        results[name].update(time_s=statistics.median(values), time_min_s=min(values), times_s=values)
    if "naive" in results:
        results["peak_ratio_ours_over_naive"] = results["ours"]["peak_bytes"] / results["naive"]["peak_bytes"]
        results["time_ratio_ours_over_naive"] = results["ours"]["time_s"] / results["naive"]["time_s"]
        results["min_time_ratio_ours_over_naive"] = results["ours"]["time_min_s"] / results["naive"]["time_min_s"]
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m grpose.bench.graph", description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=320)
    parser.add_argument("--size", type=int, default=64, help="feature map height = width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--conv", default="edge", choices=["edge", "mr", "sage", "gin"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk_size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = benchmark_gcn(
        channels=args.channels,
        size=args.size,
        batch=args.batch,
        k=args.k,
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        conv=args.conv,
        chunk_size=args.chunk_size,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
