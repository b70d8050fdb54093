"""The lab's targets in one report (docs/lab.md §8): estimator ceiling, main job AP and time, study time.

python scripts/lab_targets.py                        # runs the main job on a fresh dataset (timed), then the ceiling
python scripts/lab_targets.py --main_job_run experiments/lab/grpose --ceiling_images 200   # reuse a run, no timing

The main job is the README's first command, run in a scratch folder so that it creates its dataset as on a fresh
clone; its wall time includes that. The ceiling is the estimator's AP on the held-out real images
(``lab_pretrain.py --ceiling``). The study's time is read from the study folder's ``timing.json``
(``scripts/lab_study.py`` writes it). Prints a markdown table; ``--out`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("grpose.lab_targets")

MAIN_JOB = ["train.py", "--config", "configs/lab/grpose.yaml"]


def run_main_job(scratch: Path, overrides: list[str]) -> tuple[Path, float]:
    """The README's first command with its dataset and run folder under ``scratch``; returns the run folder and
    the wall time in seconds (dataset creation included)."""
    argv = [sys.executable, *MAIN_JOB, "--outdir", str(scratch / "runs"), "--name", "main_job",
            f"dataset.root={scratch / 'data'}", *overrides]  # fmt: skip
    log.info("main job: %s", " ".join(argv))
    tic = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, check=False)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"lab targets: the main job failed with exit code {done.returncode} ({' '.join(argv)})")
    return scratch / "runs" / "lab" / "main_job", seconds


def measure_ceiling(num_images: int | None) -> float:
    """The lab estimator's AP (corrected protocol) on the first ``num_images`` held-out real images."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from lab_pretrain import ceiling

    from grpose.config import load_config

    config = load_config(ROOT / "configs/lab/pretrain.yaml")
    row = ceiling(config, load_config(config.base_config), "configs/lab/eval.yaml", num_images, "cpu")
    return float(row["ap"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--main_job_run", default=None, help="read this run folder's final_evaluation.json (not timed)")
    p.add_argument("--ceiling_images", type=int, default=None, help="held-out images for the ceiling (default all)")
    p.add_argument("--ceiling", type=float, default=None, help="a ceiling measured before, instead of measuring it")
    p.add_argument("--study", default="docs/lab_study", help="a study folder with timing.json")
    p.add_argument("--scratch", default=None, help="folder for the timed main job (default: a temporary one)")
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    p.add_argument("overrides", nargs="*", help="config overrides for the main job, e.g. trainer.max_steps=750")
    args = p.parse_args(argv)
    from grpose.bench.machine import machine_info
    from grpose.cli import configure_logging
    from grpose.lab.targets import as_json, default_study_seconds, format_report, judge, read_final_evaluation

    configure_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    main_job_s = None
    if args.main_job_run:
        run_dir = Path(args.main_job_run)
        main_job = read_final_evaluation(run_dir)  # fails before the ceiling's minutes are spent
    else:
        with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
            run_dir, main_job_s = run_main_job(Path(scratch), list(args.overrides))
            main_job = read_final_evaluation(run_dir)
    ceiling_ap = args.ceiling if args.ceiling is not None else measure_ceiling(args.ceiling_images)
    study_s, study_detail = default_study_seconds(args.study)
    targets = judge(ceiling_ap, main_job, main_job_s, study_s, study_detail)
    print(format_report(targets))
    if args.out:
        extra = {"main_job": main_job, "main_job_run": str(run_dir), "ceiling_images": args.ceiling_images,
                 "machine": machine_info(), "overrides": list(args.overrides)}  # fmt: skip
        Path(args.out).write_text(as_json(targets, extra))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
