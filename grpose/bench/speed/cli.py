"""Issue #12 speed switches, one at a time: training step, DDIM sampling, kNN kernel and the numbers they keep.

The command (``python -m grpose.bench.speed``): runs the sections, prints the targets and a summary.
"""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path
from typing import Any

import torch

from grpose.bench.speed.knn import bench_knn
from grpose.bench.speed.recorder import Recorder, fmt_value
from grpose.bench.speed.sample import bench_sample
from grpose.bench.speed.settings import FULL, SMOKE
from grpose.bench.speed.targets import speed_targets
from grpose.bench.speed.train import bench_train, bench_train_poseloss

SUMMARY_KEYS = ("step_s", "run_s", "images_per_s", "peak_memory_gib", "mfu", "eps_rel_err", "warmup_s", "error")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m grpose.bench.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, compile with the eager backend")
    parser.add_argument("--budget_s", type=float, default=420.0, help="skip compile variants past this wall time")
    parser.add_argument("--sections", default="knn,sample,poseloss,train")
    parser.add_argument("--no_compile_train", action="store_true", help="skip the compiled training variant")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    settings = SMOKE if args.smoke else FULL
    rec = Recorder(args.out, args.budget_s)
    rec.compile_train = not args.no_compile_train
    runners = {
        "knn": bench_knn,
        "sample": bench_sample,
        "train": bench_train,
        "poseloss": bench_train_poseloss,
    }
    for name in args.sections.split(","):
        run = runners[name]
        torch._dynamo.reset()
        try:
            run(rec, device, settings)
        except Exception:  # noqa: BLE001 - keep the other sections
            traceback.print_exc()
    rec.result["targets"] = speed_targets(rec.result)
    rec.result["wall_s"] = rec.elapsed()
    rec.save()
    for row in rec.result["targets"]:
        print(f"target {row['target']}: {row['measured']} -> {'met' if row['met'] else 'NOT met'}")
    for section in ("sample", "train"):
        for row in rec.result[section]:
            values = " ".join(f"{k}={fmt_value(row[k])}" for k in SUMMARY_KEYS if k in row)
            print(f"{section:6s} {row['variant'][:52]:52s} " + values)
    print(f"total {rec.elapsed():.0f} s", flush=True)
    return rec.result
