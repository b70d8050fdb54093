"""Train GRPose (or the ControlNet baseline) from a YAML config on CPU, one GPU, or many GPUs and nodes.

python train.py --config configs/grpose/humanart.yaml --control_ckpt models/init_grpose.ckpt --devices 8
python train.py --config configs/grpose/tiny.yaml                    # CPU demo on synthetic data
python train.py --config configs/grpose/tiny.yaml --resume experiments/grpose/tiny/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from grpose.cli import configure_logging
from grpose.config import ConfigError, instantiate, load_config, split_overrides
from grpose.trust import add_trust_argument, honours_trust_flag

log = logging.getLogger("grpose.train")


def str2bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", required=True, help="YAML file(s); later files override earlier ones")
    p.add_argument("--control_ckpt", default=None, help="initial weights (prepare_weights.py output), loaded strictly")
    p.add_argument(
        "--base_model",
        default=None,
        help="the SD1.5-layout base an exported --control_ckpt (scripts/export_adapter.py) is joined with",
    )
    p.add_argument("-r", "--resume", default=None, help="a last.ckpt (or any checkpoint of this run) to resume")
    p.add_argument("-s", "--seed", type=int, default=None, help="global seed (default: trainer.seed of the config)")
    p.add_argument("--max_epochs", type=int, default=None)
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--devices", default=None, help="number of devices per node, or 'auto'")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    p.add_argument("--strategy", default="auto", help="auto | ddp | ddp_find_unused_parameters_true | ...")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on GPUs that support it, else 32")
    p.add_argument("--accumulate_grad_batches", type=int, default=1)
    p.add_argument("--log_frequency", type=int, default=None, help="image-grid interval in steps")
    p.add_argument("--scale_lr", type=str2bool, default=False, help="lr *= devices*nodes*batch*accumulation")
    p.add_argument("--sd_locked", type=str2bool, default=None, help="false: also train the UNet decoder")
    p.add_argument(
        "--use_ema",
        action="store_true",
        help="image grids and the final evaluation use the moving average (needs model.params.ema_decay)",
    )
    p.add_argument("--name", default=None, help="run name (default: the last config file's name)")
    p.add_argument("--outdir", default="experiments", help="root of run directories")
    add_trust_argument(p)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.params.alpha=3")
    return p


def resolve_devices(args: argparse.Namespace) -> int | str:
    if args.devices is None:
        return 1
    return "auto" if args.devices == "auto" else int(args.devices)


def default_precision(accelerator: str) -> str:
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def resolve_precision(requested: str, accelerator: str, config: DictConfig) -> str:
    """The config's or --precision's choice where this machine runs it well, else 32-true (with a log line).

    bf16-mixed runs on GPUs with bf16 and on CPUs that compute in bf16 natively (grpose.speed.cpu_has_native_bf16);
    16-mixed only on GPUs. In 32-bit runs the frozen modules stay fp32: ``model.params.frozen_dtype`` of ``config``
    is cleared (it needs autocast on the trainable parts).
    """
    import torch

    from grpose.speed import cpu_has_native_bf16

    precision = str(requested)
    if precision in ("bf16-mixed", "16-mixed"):
        on_gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        runs_well = (
            (on_gpu and (precision == "16-mixed" or torch.cuda.is_bf16_supported()))
            or (not on_gpu and precision == "bf16-mixed" and cpu_has_native_bf16())
        )  # fmt: skip
        if not runs_well:
            log.info("precision %s does not run well on this machine; using 32-true", precision)
            precision = "32-true"
    if precision in ("32", "32-true") and config.model.params.get("frozen_dtype"):
        log.info("precision %s: the frozen modules stay in fp32 (model.params.frozen_dtype ignored)", precision)
        config.model.params.frozen_dtype = None
    return precision


def run_directory(args: argparse.Namespace) -> Path:
    """experiments/<config folder>/<run name>; a new run never reuses a directory (a time suffix is added).

    Lightning's DDP launcher re-runs this script for ranks > 0: they inherit rank 0's choice through
    ``GRPOSE_RUN_DIR``. Under an external launcher (torchrun, SLURM) every rank derives the same name, so no
    suffix is added there: give each such run its own ``--name``.
    """
    if os.environ.get("GRPOSE_RUN_DIR") and int(os.environ.get("LOCAL_RANK", 0)) > 0:
        return Path(os.environ["GRPOSE_RUN_DIR"])
    if args.resume:
        ckpt = Path(args.resume)
        return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    last_config = Path(args.config[-1])
    name = args.name or last_config.stem
    run_dir = Path(args.outdir) / last_config.parent.name / name
    if run_dir.exists() and int(os.environ.get("WORLD_SIZE", 1)) == 1:
        run_dir = run_dir.with_name(f"{name}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    return run_dir


def check_resume(resume: str, config: DictConfig) -> tuple[int, int] | None:
    """Fail before any training when --resume names a missing file, a file the safe loader refuses (it would run
    code; see ``grpose.checkpoint``) or a checkpoint of another model config. Returns where the run's
    ``logs/metrics.csv`` stood when the checkpoint was written (``grpose.csv_log``)."""
    from grpose.checkpoint import UntrustedCheckpointError, read_checkpoint

    path = Path(resume)
    if not path.is_file():
        raise SystemExit(f"--resume: checkpoint not found: {path}")
    try:
        ckpt = read_checkpoint(path)
    except UntrustedCheckpointError as err:
        raise SystemExit(f"--resume: {err}") from err
    except Exception as err:  # any unreadable file: report and stop before training
        raise SystemExit(f"--resume: could not read {path} (truncated or corrupt?): {err}") from err
    from grpose.callbacks import stored_config

    stored_yaml = stored_config(ckpt)
    if stored_yaml is None:
        raise SystemExit(f"--resume: {path} was not written by train.py (no stored config); cannot resume from it")
    stored = OmegaConf.create(stored_yaml)
    if OmegaConf.to_container(stored.model, resolve=True) != OmegaConf.to_container(config.model, resolve=True):
        raise SystemExit(
            f"--resume: {path} was trained with a different model config; resume with the config it was trained "
            "with (stored inside the checkpoint and in the run's config.yaml)"
        )
    from grpose.csv_log import resume_point

    return resume_point(ckpt)


def ensure_synthetic_data(config: DictConfig) -> None:
    """Create the synthetic dataset a config points at (``synthetic_data: {out, num, seed, image_size,
    val_fraction}``) if missing; a folder made with other settings or an older generator is refused
    (``ensure_synthetic_dataset``)."""
    spec = config.get("synthetic_data")
    if not spec:
        return
    from grpose.data.synthetic import ensure_synthetic_dataset

    extra = {k: tuple(v) if k == "image_size" else v for k, v in spec.items() if k in ("image_size", "val_fraction")}
    try:
        ensure_synthetic_dataset(spec.out, spec.num, seed=spec.get("seed", 0), **extra)
    except ValueError as err:
        raise SystemExit(f"synthetic_data: {err}") from err


def load_control_ckpt(model, path: str, base_model: str | None = None) -> None:
    """Initial weights: a whole checkpoint (strictly), or an exported trained-weights file joined with
    ``base_model`` (scripts/export_adapter.py, docs/checkpoints.md §4)."""
    from grpose.checkpoint import CheckpointError, load_into, read_state_dict
    from grpose.export import load_trained_weights_with_base, read_export_metadata

    try:
        if read_export_metadata(path) is not None:
            summary = load_trained_weights_with_base(model, path, base_model)
        else:
            if base_model:
                raise CheckpointError("--base_model goes with an exported trained-weights file (export_adapter.py)")
            state_dict = read_state_dict(path, config_key="--control_ckpt", what="initial GRPose weights")
            summary = load_into(model, state_dict, strict=True, ignore=("mmpose_model.",), source=path).summary()
    except CheckpointError as err:
        raise SystemExit(f"--control_ckpt {path}: {err}") from err
    log.info("loaded %s: %s", path, summary)


BASE_WEIGHTS_WHAT = (
    "base model weights in the ldm layout (SD1.5: models/v1-5-pruned.ckpt; the lab's base model: "
    "python scripts/lab_pretrain.py --stage autoencoder, then --stage unet; see docs/lab.md)"
)


def load_base_weights(model, paths: list[str]) -> None:
    """Initialise from the base model files of config key ``base_weights`` (the lab's stand-in for SD1.5): frozen
    parts strictly, the adapter's encoder copy from the UNet, as ``prepare_weights.py`` does for SD1.5."""
    from grpose.checkpoint import CheckpointError, read_state_dict
    from grpose.init_weights import init_from_base

    state_dict = {}
    try:
        for path in paths:
            state_dict.update(read_state_dict(path, config_key="base_weights", what=BASE_WEIGHTS_WHAT))
        copied = init_from_base(model, state_dict, source=", ".join(paths))
    except CheckpointError as err:
        raise SystemExit(f"base_weights: {err}") from err
    log.info("base weights from %s: copied %s keys", ", ".join(paths), copied)


def pose_validation_callback(config: DictConfig, run_dir: Path, every_n_steps: int):
    """Pose AP / CAP / PCE of a fixed validation subset while training (config key ``pose_validation``, every
    ``trainer.val_every_n_steps`` steps; grpose/pose_validation.py)."""
    from grpose.pose_validation import PoseValidation

    spec = config.pose_validation
    return PoseValidation(
        dataset_params=OmegaConf.to_container(config.data.params.validation.params, resolve=True),
        build_estimator=lambda: instantiate(spec.pose_estimator, "pose_validation.pose_estimator"),
        every_n_steps=every_n_steps,
        out_dir=run_dir / "pose_validation",
        num_images=spec.get("num_images", 16),
        seed=spec.get("seed", 42),
        ddim_steps=spec.get("ddim_steps", 10),
        guidance_scale=spec.get("guidance_scale", config.model.params.get("guidance_scale", 5.0)),
        batch_size=spec.get("batch_size", 8),
    )


def final_evaluation_protocols(config: DictConfig) -> tuple[str, ...]:
    """``final_evaluation.protocols`` (default both), checked before training starts rather than after it."""
    from grpose.validation import PROTOCOLS

    protocols = tuple(config.final_evaluation.get("protocols", PROTOCOLS))
    if "corrected" not in protocols or not set(protocols) <= set(PROTOCOLS):
        raise SystemExit(f"final_evaluation.protocols: {list(protocols)}; choose from {list(PROTOCOLS)}, with "
                         "'corrected' (the printed table's protocol) among them")  # fmt: skip
    return protocols


def final_evaluation(
    model, config: DictConfig, run_dir: Path, protocols: tuple[str, ...], precision: str = "32-true"
) -> dict:
    """Pose AP of the trained model and of the base model alone on a fixed validation subset (config key
    ``final_evaluation``) in ``protocols`` (``final_evaluation_protocols``; the table prints the corrected one),
    printed as a table and written to ``run_dir/final_evaluation.json``. Samples under the autocast of the training
    ``precision``, as the image grids and the pose validation do."""
    import json

    import torch

    from grpose.data.pose_dataset import PoseDataset
    from grpose.speed import autocast_for
    from grpose.validation import generate_subset, score_subset, summary_row

    spec = config.final_evaluation
    dataset = PoseDataset(**{**config.data.params.validation.params, "train": False})
    ids = list(dataset.ids)[: spec.num_images]
    estimator = instantiate(spec.pose_estimator, "final_evaluation.pose_estimator")
    model = model.to("cpu") if not torch.cuda.is_available() else model
    device_type = next(model.parameters()).device.type
    rows = {}
    for name, use_adapter in (("trained", True), ("base only", False)):
        with autocast_for(precision, device_type):
            samples, images = generate_subset(model, dataset, ids, seed=spec.seed, num_steps=spec.ddim_steps,
                                              guidance_scale=spec.guidance_scale, use_adapter=use_adapter)  # fmt: skip
        rows[name] = summary_row(score_subset(samples, images, estimator, protocols=protocols))
    (run_dir / "final_evaluation.json").write_text(json.dumps(rows, indent=1))
    print(f"pose alignment on {len(ids)} validation images (DDIM {spec.ddim_steps}, CFG {spec.guidance_scale}):")
    print(f"  {'':10s} {'AP':>6s} {'AP50':>6s} {'CAP':>6s} {'PCE':>6s}")
    for name, row in rows.items():
        print(f"  {name:10s} {row['ap']:6.3f} {row['ap50']:6.3f} {row['cap']:6.3f} {row['pce']:6.2f}")
    return rows


@honours_trust_flag
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config, args.overrides = split_overrides(args.config, args.overrides)
    configure_logging("%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(*args.config, overrides=args.overrides)
    except ConfigError as err:
        raise SystemExit(str(err)) from err
    trainer_cfg = config.get("trainer", OmegaConf.create({}))
    if args.sd_locked is not None:
        config.model.params.sd_locked = args.sd_locked
    csv_resume_point = check_resume(args.resume, config) if args.resume else None
    protocols = final_evaluation_protocols(config) if config.get("final_evaluation") else None

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from grpose.callbacks import ImageLogger, LastCheckpoint, ResumeState, SafeCheckpointIO
    from grpose.csv_log import CSVRowsAtSave, ResumableCSVLogger

    seed = args.seed if args.seed is not None else trainer_cfg.get("seed", 23)
    pl.seed_everything(seed, workers=True)
    ensure_synthetic_data(config)

    accelerator = args.accelerator
    devices = resolve_devices(args)
    precision = resolve_precision(args.precision or trainer_cfg.get("precision") or default_precision(accelerator),
                                  accelerator, config)  # fmt: skip
    batch_size = config.data.params.get("batch_size", 1)
    if args.scale_lr:
        world = int(devices) * args.num_nodes if isinstance(devices, int) else 1
        base_lr = config.model.params.learning_rate
        config.model.params.learning_rate = base_lr * world * batch_size * args.accumulate_grad_batches
        log.info(
            "scale_lr: lr = %g = %g x %d devices x %d batch x %d accumulation",
            config.model.params.learning_rate,
            base_lr,
            world,
            batch_size,
            args.accumulate_grad_batches,
        )

    run_dir = run_directory(args)
    os.environ["GRPOSE_RUN_DIR"] = str(run_dir)
    try:
        model = instantiate(config.model, "model")
        datamodule = instantiate(config.data, "data", recursive=False)  # datasets are built lazily by the DataModule
    except ConfigError as err:
        raise SystemExit(str(err)) from err
    if args.use_ema:
        if not getattr(model, "ema_decay", None):
            raise SystemExit("--use_ema needs a moving average: set model.params.ema_decay (e.g. 0.9999)")
        model.sample_with_ema = True
    if config.get("base_weights") and not args.control_ckpt and not args.resume:
        load_base_weights(model, list(config.base_weights))
    if args.base_model and not args.control_ckpt:
        raise SystemExit("--base_model needs --control_ckpt (an exported trained-weights file to join it with)")
    if args.control_ckpt and not args.resume:
        load_control_ckpt(model, args.control_ckpt, args.base_model)

    ckpt_dir = run_dir / "checkpoints"
    log_frequency = args.log_frequency or trainer_cfg.get("log_frequency", 300)
    callbacks = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="{epoch:04d}",
            every_n_epochs=trainer_cfg.get("every_n_epochs", 4),
            save_top_k=-1,
            save_last=False,
        ),
        LastCheckpoint(str(ckpt_dir), every_n_steps=trainer_cfg.get("last_every_n_steps", 500)),
        ImageLogger(
            every_n_steps=log_frequency,
            num_steps=trainer_cfg.get("image_sample_steps", 20),
            out_dir=str(run_dir / "images"),
        ),
        ResumeState(OmegaConf.to_yaml(config, resolve=True)),
        CSVRowsAtSave(),
        LearningRateMonitor(logging_interval="step"),
    ]
    if trainer_cfg.get("val_every_n_steps") and config.get("pose_validation"):
        callbacks.append(pose_validation_callback(config, run_dir, int(trainer_cfg.val_every_n_steps)))
    loggers = [ResumableCSVLogger(run_dir, name="logs", version="", resume_from=csv_resume_point)]
    try:
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    except ModuleNotFoundError:
        log.info("tensorboard not installed: logging to CSV only")
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=precision,
        max_epochs=args.max_epochs if args.max_epochs is not None else trainer_cfg.get("max_epochs", 40),
        max_steps=args.max_steps if args.max_steps is not None else trainer_cfg.get("max_steps", -1),
        accumulate_grad_batches=args.accumulate_grad_batches,
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=run_dir,
        log_every_n_steps=trainer_cfg.get("log_every_n_steps", 10),
        benchmark=trainer_cfg.get("cudnn_benchmark", True),
        deterministic=trainer_cfg.get("deterministic", False),
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_progress_bar=trainer_cfg.get("progress_bar", True),
        plugins=[SafeCheckpointIO()],  # --resume is read without running code from the file
    )
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, run_dir / "config.yaml", resolve=True)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=args.resume)
    finally:
        os.environ.pop("GRPOSE_RUN_DIR", None)
    if trainer.is_global_zero:
        last = ckpt_dir / "last.ckpt"
        print(f"run directory: {run_dir}\ncheckpoint:    {last}\nimage grids:   {run_dir / 'images'}")
        if config.get("final_evaluation"):
            final_evaluation(model, config, run_dir, protocols=protocols, precision=precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
