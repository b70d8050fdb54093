"""The lab study (docs/lab.md §5): base only, ControlNet, GRPose, GRPose + pose loss and ablations, equal budgets.

python scripts/lab_study.py                 # the default study (under an hour on 2 CPU cores)
python scripts/lab_study.py --quick         # 9 minutes on 2 cores: 40 steps, 16 images, one seed
python scripts/lab_study.py --rows grpose controlnet --seeds 0 1 2

Every row trains through train.py on the frozen lab base (configs/lab/), in segments that resume exactly, and is
evaluated after each segment on the same test subset with the same per-image seeds, by the lab estimator, under
both protocols. Writes OUT/results.json (resumable: finished evaluations are kept), OUT/table.md,
OUT/ap_vs_steps.png and OUT/timing.json (each invocation's wall time; scripts/lab_targets.py reads it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("grpose.lab_study")

BASE = "configs/lab/grpose.yaml"
ROWS: dict[str, list[str]] = {
    "base only": [],
    "ControlNet": ["configs/lab/controlnet.yaml"],
    "GRPose": [BASE],
    "GRPose + pose loss": [BASE, "configs/lab/grpose_poseloss.yaml"],
    "GRPose, MRConv": ["configs/lab/ablations/conv_mr.yaml"],
    "GRPose, k=4": ["configs/lab/ablations/k4.yaml"],
    "GRPose, PGI at levels 1-2": ["configs/lab/ablations/pgi_levels_12.yaml"],
}
SEEDED_ROWS = ("ControlNet", "GRPose")  # rows run with every --seeds value; the others with the first seed


@dataclass(frozen=True)
class Budget:
    """What every row gets: training steps (batch 16), evaluations along them, and the test subset's sampling."""

    steps: int
    segments: int
    num_images: int
    ddim_steps: int
    precision: str = "32-true"  # what train.py runs the lab configs in on this machine (bf16-mixed or 32-true)
    overrides: tuple[str, ...] = ()


COLUMNS = ("ap", "ap50", "cap", "pce", "ap_released", "ap50_released", "cap_released", "pce_released")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="40 steps, 16 images, one seed")
    p.add_argument("--steps", type=int, default=None, help="training steps per row (default 150; quick 40)")
    p.add_argument("--segments", type=int, default=3, help="evaluations along training (AP vs steps)")
    p.add_argument("--num_images", type=int, default=None, help="test subset size (default 32; quick 16)")
    p.add_argument("--ddim_steps", type=int, default=10, help="DDIM steps of the evaluation samples")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1; quick 0)")
    p.add_argument("--rows", nargs="+", default=None, help=f"subset of rows: {list(ROWS)}")
    p.add_argument("--out", default=None, help="output folder (default outputs/lab_study[_quick])")
    p.add_argument("overrides", nargs="*", help="config overrides for every row, e.g. dataset.root=/data/lab")
    return p


def evaluate(configs: list[str], ckpt: Path | None, budget: Budget) -> dict[str, float]:
    """Pose metrics of a trained checkpoint, or of the base model alone when ``ckpt`` is None."""
    import torch

    from grpose.checkpoint import load_into, read_state_dict
    from grpose.config import instantiate, load_config
    from grpose.data.pose_dataset import PoseDataset
    from grpose.speed import autocast_for
    from grpose.validation import generate_subset, score_subset, summary_row
    from train import ensure_synthetic_data, load_base_weights, resolve_precision

    overrides = [*budget.overrides, f"final_evaluation.ddim_steps={budget.ddim_steps}"]
    config = load_config(*(configs or [BASE]), overrides=overrides)
    precision = resolve_precision(config.trainer.precision, "cpu", config)  # the rows train on the CPU, as train.py
    ensure_synthetic_data(config)  # the base-only row may come first, before any training created the dataset
    spec = config.final_evaluation
    with torch.random.fork_rng(devices=[]):
        model = instantiate(config.model, "model")
    if ckpt is None:
        load_base_weights(model, list(config.base_weights))
    else:
        load_into(model, read_state_dict(ckpt), strict=True, source=str(ckpt))
    dataset = PoseDataset(**{**config.data.params.validation.params, "train": False})
    ids = list(dataset.ids)[: budget.num_images]
    estimator = instantiate(spec.pose_estimator, "final_evaluation.pose_estimator")
    with autocast_for(precision, "cpu"):
        samples, images = generate_subset(model, dataset, ids, seed=spec.seed, num_steps=spec.ddim_steps,
                                          guidance_scale=spec.guidance_scale, use_adapter=ckpt is not None)  # fmt: skip
    return summary_row(score_subset(samples, images, estimator))


def run_row(*, name: str, configs: list[str], seed: int, budget: Budget, out: Path, results: dict, save) -> None:
    """Train one row in ``budget.segments`` resumed pieces, evaluating after each; results[key][step] = metrics."""
    import train

    key = f"{name} | seed {seed}"
    record = results.setdefault(key, {"row": name, "seed": seed, "configs": configs, "evals": {}, "train_s": 0.0})
    if not configs:  # the base model alone: nothing to train
        if "0" not in record["evals"]:
            record["evals"]["0"] = evaluate([], None, budget)
            save()
        return
    run_name = f"{name.replace(' ', '_').replace(',', '').replace('+', 'plus').replace('=', '')}_seed{seed}"
    run_dir = out / "runs" / Path(configs[-1]).parent.name / run_name
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    marks = [round(budget.steps * (i + 1) / budget.segments) for i in range(budget.segments)]
    for mark in marks:
        if str(mark) in record["evals"]:
            continue
        argv = ["--config", *configs, "--outdir", str(out / "runs"), "--name", run_name, "--seed", str(seed),
                "--max_steps", str(mark), "final_evaluation=null", "trainer.val_every_n_steps=0",
                f"trainer.last_every_n_steps={mark}", f"trainer.log_frequency={10**9}", *budget.overrides]  # fmt: skip
        if ckpt.is_file():
            argv = ["--resume", str(ckpt), *argv]
        tic = time.perf_counter()
        if train.main(argv) != 0:
            raise SystemExit(f"lab study: training of {key!r} failed (train.py {' '.join(argv)})")
        record["train_s"] += time.perf_counter() - tic
        record["evals"][str(mark)] = evaluate(configs, ckpt, budget)
        save()
        log.info("%s step %d: %s", key, mark, record["evals"][str(mark)])


def row_seeds(name: str, seeds: list[int]) -> list[int]:
    """The seeds a row runs with: every one for SEEDED_ROWS, the first for the others."""
    return seeds if name in SEEDED_ROWS else seeds[:1]


def aggregate(results: dict) -> dict[str, dict]:
    """Per row: the final evaluation's columns as mean and spread (max - min) over seeds, and wall time."""
    rows: dict[str, dict] = {}
    for record in results.values():
        final = record["evals"][max(record["evals"], key=int)]
        row = rows.setdefault(record["row"], {"finals": [], "train_s": 0.0})
        row["finals"].append(final)
        row["train_s"] += record["train_s"]
    for row in rows.values():
        row["mean"] = {c: float(np.mean([f[c] for f in row["finals"]])) for c in COLUMNS}
        row["spread"] = {c: float(np.ptp([f[c] for f in row["finals"]])) for c in COLUMNS}
        row["seeds"] = len(row["finals"])
    return rows


def write_table(rows: dict[str, dict], path: Path, header: str) -> str:
    titles = ("AP", "AP50", "CAP", "PCE", "AP (rel.)", "AP50 (rel.)", "CAP (rel.)", "PCE (rel.)")
    lines = [header, "", "| row | seeds | " + " | ".join(titles) + " | train s |", "|---|---|" + "---|" * 9]
    for name, row in rows.items():
        cells = []
        for c in COLUMNS:
            mean, spread = row["mean"][c], row["spread"][c]
            cells.append(f"{mean:.3f} ± {spread / 2:.3f}" if row["seeds"] > 1 else f"{mean:.3f}")
        lines.append(f"| {name} | {row['seeds']} | " + " | ".join(cells) + f" | {row['train_s']:.0f} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    row_order = list(ROWS)
    colours = {name: f"C{i}" for i, name in enumerate(row_order)}  # one colour per row, one line style per seed
    styles = ["-", "--", ":", "-."]
    for record in sorted(results.values(), key=lambda r: (row_order.index(r["row"]), r["seed"])):
        evals = sorted((int(s), m["ap"]) for s, m in record["evals"].items())
        if len(evals) == 1 and evals[0][0] == 0:
            ax.axhline(evals[0][1], color="grey", linestyle="--", label=f"{record['row']}")
            continue
        steps, ap = zip(*evals)
        ax.plot(steps, ap, marker="o", color=colours[record["row"]], linestyle=styles[record["seed"] % len(styles)],
                label=f"{record['row']} (seed {record['seed']})")  # fmt: skip
    ax.set_xlabel("adapter training steps (batch 16)")
    ax.set_ylabel("pose AP (corrected protocol)")
    ax.set_title("Lab study: pose AP of generated images vs training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lab_precision(overrides: list[str]) -> str:
    """The precision train.py resolves for the lab configs on this machine (bf16-mixed needs native CPU bf16)."""
    from grpose.config import load_config
    from train import resolve_precision

    config = load_config(BASE, overrides=list(overrides))
    return resolve_precision(config.trainer.precision, "auto", config)


def check_same_budget(path: Path, budget: Budget) -> None:
    """A study folder resumes only under the budget it was started with (its results would not compare)."""
    wanted = json.loads(json.dumps(asdict(budget)))  # tuples as lists, as read back
    if path.is_file() and (found := json.loads(path.read_text())) != wanted:
        raise SystemExit(
            f"{path}: this study folder was started with {found}, not {wanted}; resume with the same "
            "--steps/--segments/--num_images/--ddim_steps/overrides (and precision) or use another --out"
        )
    path.write_text(json.dumps(wanted, indent=1))


def default_budget(precision: str) -> Budget:
    """The budget of ``python scripts/lab_study.py`` without options (the study the lab's time target is about)."""
    return Budget(steps=150, segments=3, num_images=32, ddim_steps=10, precision=precision)


def record_timing(path: Path, **record) -> None:
    """Append this invocation's wall time to ``path`` (read by scripts/lab_targets.py): rows, seeds, seconds,
    whether it was the default study and whether it started from an empty folder (``fresh``: it ran every row)."""
    from grpose.bench.machine import machine_info

    info = machine_info()
    records = json.loads(path.read_text()) if path.is_file() else []
    records.append({**record, "finished": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{info['cpu']}, "
                    f"{info['threads']} threads"})  # fmt: skip
    path.write_text(json.dumps(records, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from grpose.cli import configure_logging

    configure_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    precision = lab_precision(args.overrides)
    default = default_budget(precision)
    budget = Budget(
        steps=args.steps or (40 if args.quick else default.steps),
        segments=args.segments,
        num_images=args.num_images or (16 if args.quick else default.num_images),
        ddim_steps=args.ddim_steps,
        precision=precision,
        overrides=tuple(args.overrides),
    )
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    names = args.rows or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; choose from {list(ROWS)}")
    out = Path(args.out or ("outputs/lab_study_quick" if args.quick else "outputs/lab_study"))
    out.mkdir(parents=True, exist_ok=True)
    check_same_budget(out / "budget.json", budget)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1))

    fresh = not results
    tic = time.perf_counter()
    for name in names:
        for seed in row_seeds(name, seeds):
            run_row(name=name, configs=ROWS[name], seed=seed, budget=budget, out=out, results=results, save=save)
    wall = time.perf_counter() - tic
    is_default = not args.quick and budget == default and seeds == [0, 1] and names == list(ROWS)
    record_timing(out / "timing.json", rows=names, seeds=seeds, wall_s=wall, default_study=is_default, fresh=fresh)
    # this invocation's rows and seeds only: a folder may hold more (e.g. a third seed added later)
    chosen = {k: r for k, r in results.items() if r["row"] in names and r["seed"] in row_seeds(r["row"], seeds)}
    rows = aggregate(chosen)
    header = (f"Lab study: {budget.steps} steps per row (batch 16), {budget.num_images} test images "
              f"(DDIM {budget.ddim_steps}), seeds {seeds}, {budget.precision}; "
              f"this invocation {wall / 60:.1f} min")  # fmt: skip
    print(write_table(rows, out / "table.md", header))
    plot(chosen, out / "ap_vs_steps.png")
    print(f"wrote {out / 'table.md'}, {out / 'ap_vs_steps.png'}, {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
