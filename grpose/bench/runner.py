"""GRPose benchmark suite (README targets): training step, sampling, pose estimator, graph layer, data, eval estimate.

    python -m grpose.bench --suite cpu --out bench_cpu.json             # tiny model on CPU, < 10 min on 2 cores
    python -m grpose.bench --suite gpu --out bench_gpu.json [--compile]  # SD1.5-size GRPose, bf16, one GPU
    python -m grpose.bench --suite cpu --smoke --out /tmp/b.json        # one step of everything (the test)

Prints one table per section and writes JSON: ``machine`` plus one key per section (``train``, ``sample``, ``pose``,
``graph``, ``data``, ``eval``), each a dict keyed by suite (``cpu``/``gpu``). Times are medians after warm-up;
GPU peak memory is ``torch.cuda.max_memory_allocated``, CPU peak memory the process's peak RSS (VmHWM, reset
before each measurement through /proc/self/clear_refs). FLOPs come from torch.utils.flop_counter (matmuls,
convolutions, attention; on CPU the flash-attention kernel is not counted, so CPU FLOPs are a lower bound).
Each suite's settings are in grpose/bench/suites.py; the sections are grpose/bench/{train,sample,pose,graph,data}.py.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from grpose.bench.data import data_section
from grpose.bench.estimate import eval_estimate
from grpose.bench.graph import graph_section
from grpose.bench.machine import load_average, machine_info
from grpose.bench.pose import pose_section
from grpose.bench.report import SECTIONS, check_targets, print_report
from grpose.bench.sample import sample_section
from grpose.bench.speed.cli import main as speed_main
from grpose.bench.suites import Suite, suite_settings
from grpose.bench.timing import Stopwatch
from grpose.bench.train import train_section

# Sections beyond report.SECTIONS: "speed" runs grpose.bench.speed (GPU only, about 6 min).
OPTIONAL_SECTIONS = ("speed",)


def run_suite(suite: Suite, sections: Sequence[str], compile_model: bool) -> dict[str, Any]:
    """Run the selected sections with ``suite``'s settings, in a fixed order; then the eval estimate and targets."""
    if suite.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--suite {suite.name} needs a CUDA device (torch.cuda.is_available() is False)")
    measured: dict[str, tuple[str, Callable[[], Any]]] = {
        "train": ("training step", lambda: train_section(suite)),
        "sample": ("sampling (DDIM + CFG)", lambda: sample_section(suite, compile_model=compile_model)),
        "pose": ("pose estimator (HigherHRNet-W48)", lambda: pose_section(suite)),
        "graph": ("graph layer (GCN vs gather EdgeConv)", lambda: graph_section(suite)),
        "data": ("data (one worker, 512 px)", lambda: data_section(suite)),
        "speed": ("speed switches one by one (python -m grpose.bench.speed)", lambda: speed_main([])),
    }
    if not suite.speed:
        del measured["speed"]
    out: dict[str, Any] = {}
    wall: dict[str, float] = {}
    for name, (title, run) in measured.items():
        if name in sections:
            watch = Stopwatch()
            print(f"[{suite.name}] {title}", flush=True)
            out[name] = run()
            wall[name] = watch.elapsed()
    if "eval" in sections and "sample" in out:
        out["eval"] = eval_estimate(out["sample"], out.get("pose"), suite.eval_label)
    if suite.targets:
        out["targets"] = check_targets(out)
    out["section_wall_s"] = wall
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m grpose.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["cpu", "gpu", "all"], default="cpu")
    parser.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated subset of {SECTIONS + OPTIONAL_SECTIONS} (default: all; 'speed' on the gpu suite only)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="one step of everything, tiny sizes (the test)")
    parser.add_argument("--compile", action="store_true", help="also time sampling with torch.compile'd UNet/adapter")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    default = SECTIONS + (OPTIONAL_SECTIONS if args.suite == "gpu" else ())
    sections = [s.strip() for s in (args.sections or ",".join(default)).split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS + OPTIONAL_SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS + OPTIONAL_SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = ["cpu", "gpu"] if args.suite == "all" else [args.suite]
    result: dict[str, Any] = {"machine": machine_info(), "suites": suites, "smoke": args.smoke}
    watch = Stopwatch()
    for name in suites:
        suite = suite_settings(name, smoke=args.smoke)
        for section, value in run_suite(suite, sections, compile_model=args.compile).items():
            result.setdefault(section, {})[name] = value
    result["machine"]["load_average_end"] = load_average()
    result["wall_s"] = watch.elapsed()
    print_report(result)
    print(f"\ntotal wall time {result['wall_s']:.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
