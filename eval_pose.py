"""Evaluate pose alignment (and optionally image quality) of a GRPose/ControlNet checkpoint on one or many devices.

    python eval_pose.py --config_model configs/grpose/humanart.yaml --ckpt experiments/.../last.ckpt --devices 8
    torchrun --nproc_per_node 8 eval_pose.py --config_model ... --ckpt ...      # same results, same files
    srun --ntasks-per-node 8 --gpus-per-node 8 python eval_pose.py --config_model ... --ckpt ...

Each process generates a deterministic share of the test entries (seed per image from --seed and the entry id),
detects people with HigherHRNet and appends one line per image to its results shard. Rerunning the same command
skips finished entries. Rank 0 merges the shards and scores the whole set (grpose.metrics). The work is done by
the package grpose/evaluation/ (processes: grpose/evaluation/launch.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from grpose.cli import configure_logging
from grpose.config import split_overrides
from grpose.trust import add_trust_argument, honours_trust_flag

DEFAULT_METRICS_CONFIG = str(Path(__file__).resolve().parent / "configs/eval/metrics.yaml")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_model", nargs="+", required=True, help="model YAML file(s), as for train.py")
    p.add_argument("--ckpt", default=None, help="checkpoint to evaluate (train.py output or the released file)")
    add_trust_argument(p)  # --trust_checkpoint (every weight file; see grpose/trust.py)
    p.add_argument(
        "--use_ema",
        action="store_true",
        help="evaluate the checkpoint's moving average of the trained weights (trained with model.params.ema_decay)",
    )
    p.add_argument(
        "--images_dir",
        default=None,
        help="score existing generated images instead of sampling: <dir>/<scene>/<name>.{jpg,png}, plain images or "
        "eval panels (the first square is used); no --ckpt needed",
    )
    p.add_argument("--batch_size", type=int, default=4, help="images generated per forward")
    p.add_argument(
        "--metric_batch_size", type=int, default=4, help="batch of the per-batch AP rows (ap_batch_mean); 4 as released"
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="GPU speed switches for sampling, as measured in README 'Benchmarks': frozen parts in bf16, "
        "fused kNN, pose branch cached per batch, cuDNN autotuning, CUDA-graphed DDIM steps, channels-last and "
        "regional torch.compile (about 1 min of compilation, then 2.1x the plain images/s on an H200)",
    )
    p.add_argument("--ddim_steps", type=int, default=50)
    p.add_argument("--ddim_eta", type=float, default=0.0)
    p.add_argument("--scale", type=float, default=9.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--H", type=int, default=None, help="image height (default: the test dataset's image_size)")
    p.add_argument("--W", type=int, default=None, help="image width (must equal H: the dataset crops squares)")
    p.add_argument("--map_file", default=None, help="mapping JSON of the test set (default: config data.test)")
    p.add_argument("--base_dir", default=None, help="directory the map file's paths are relative to")
    p.add_argument("--base_model", default=None, help="another SD1.5 checkpoint for the frozen parts")
    p.add_argument("--metrics", default="pose", choices=["pose", "quality", "all", "none"])
    p.add_argument("--config_metrics", default=DEFAULT_METRICS_CONFIG, help="pose estimator / quality settings")
    p.add_argument("--protocol", default="corrected", choices=["corrected", "released"])
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes to spawn here (under torchrun or srun: the launcher's processes)",
    )
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--outdir", default="outputs")
    p.add_argument("--run", default=None, help="run name (default: the checkpoint's file name)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N entries (sorted by id)")
    p.add_argument("--no_panels", action="store_true", help="do not write the image panels")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the model config")
    return p


@honours_trust_flag
def main(argv: list[str] | None = None) -> int:
    from grpose.evaluation.run import evaluate
    from grpose.evaluation.scoring import print_table
    from grpose.evaluation.settings import EvalSettings

    args = build_parser().parse_args(argv)
    args.config_model, args.overrides = split_overrides(args.config_model, args.overrides)
    configure_logging("%(levelname)s %(name)s: %(message)s")
    started = time.time()
    settings = EvalSettings.from_args(args)
    metrics = evaluate(settings)
    if metrics is not None:
        print_table(metrics)
        print(f"results: {settings.out_dir}  (metrics.json, metrics.csv, results.rank*.jsonl)")
        print(f"total time: {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
