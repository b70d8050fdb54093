"""Checks that fail an evaluation clearly before any long work (README "Evaluation": bad input fails before any
generation): an unwritable output directory, missing or unfitting weights, broken mapping entries."""

from __future__ import annotations

from pathlib import Path

from grpose.evaluation.model_loading import check_checkpoint_fits
from grpose.evaluation.settings import EvalSettings


def preflight(settings: EvalSettings, *, rank: int) -> None:
    """Run every check; each process runs them, so that a failure does not leave the others waiting."""
    check_writable(settings.out_dir, rank=rank)
    if settings.images_dir:
        if not Path(settings.images_dir).is_dir():
            raise SystemExit(f"--images_dir: not a directory: {settings.images_dir}")
    elif not settings.ckpt:
        raise SystemExit("pass --ckpt (a checkpoint to sample with) or --images_dir (generated images to score)")
    else:
        check_checkpoint_fits(
            settings.model_config,
            ckpt=settings.ckpt,
            base_model=settings.base_model,
            use_ema=settings.use_ema,
            config_files=settings.config_files,
        )
    if settings.base_model and not Path(settings.base_model).is_file():
        raise SystemExit(f"--base_model: checkpoint not found: {settings.base_model}")
    if settings.scores_pose:
        check_estimator_weights(settings.metrics_config.pose_estimator.get("params", {}), settings.metrics_config_file)
    check_entries(settings.mapping, ids=settings.evaluated_ids, base=settings.base_dir, source=settings.mapping_file)


def check_writable(out_dir: Path, *, rank: int) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_test.rank{rank}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"--outdir: cannot write to {out_dir}: {err}; choose a writable directory") from err


def check_estimator_weights(params, config_file: str) -> None:
    """The pose estimator's weight file (``pose_estimator.params.checkpoint``) exists, or random init is allowed."""
    ckpt = params.get("checkpoint")
    if ckpt is None and not params.get("allow_random_init", False):
        raise SystemExit(f"{config_file}: pose_estimator.params.checkpoint is not set")
    if ckpt is not None and not Path(ckpt).is_file():
        raise SystemExit(
            f"pose estimator weights not found: {ckpt} (config key pose_estimator.params.checkpoint in "
            f"{config_file}); expected the HigherHRNet-W48 UDP Human-Art checkpoint "
            "higherhrnet_w48_humanart_512x512_udp.pth, see models/README.md"
        )


def check_entries(mapping: dict, *, ids: list[str], base: Path, source: Path) -> None:
    """Every evaluated entry has its fields and its image and pose files."""
    problems = []
    for entry_id in sorted(ids):
        entry = mapping[entry_id]
        for key in ("img_path", "pose_path", "prompt"):
            if key not in entry:
                problems.append(f"entry {entry_id}: no '{key}' field")
        for key in ("img_path", "pose_path"):
            if key in entry and not (base / entry[key]).is_file():
                problems.append(f"entry {entry_id}: {key} {base / entry[key]} does not exist")
    if problems:
        shown = "\n  ".join(problems[:10])
        raise SystemExit(
            f"{source}: {len(problems)} problem(s) in the test set:\n  {shown}\n"
            "fix the entries (scripts/check_dataset.py lists them all) or pass --limit"
        )
