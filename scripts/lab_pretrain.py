"""Pretrain the lab's base model (autoencoder, then UNet + text encoder) and pose estimator (docs/lab.md).

python scripts/lab_pretrain.py --stage all              # everything, in order; each stage resumes if killed
python scripts/lab_pretrain.py --stage estimator        # one stage: autoencoder | unet | estimator
python scripts/lab_pretrain.py --stage unet --smoke     # a few steps into a scratch folder (tests)
python scripts/lab_pretrain.py --ceiling                # the estimator's AP on the held-out real images
python scripts/lab_pretrain.py --ceiling 200 --through_autoencoder models/lab/autoencoder.safetensors
                                                        # ... on their round trips through the lab autoencoder
python scripts/lab_pretrain.py --occlusion              # joints hidden behind other figures, and what they cost

Writes models/lab/{autoencoder,unet_text,pose_estimator}.safetensors (fp16, keys as in real checkpoints; the
header records the config, the command and the seed). Deterministic on one machine type for the config's
``threads``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpose.cli import configure_logging
from grpose.config import ConfigError, instantiate, load_config

log = logging.getLogger("grpose.lab_pretrain")
STAGES = ("autoencoder", "unet", "estimator")


def lab_arrays(config: DictConfig, split: str):
    from grpose.lab.data import load_lab_arrays

    out = ensure_lab_dataset_of(config)
    return load_lab_arrays(out / f"mapping_file_{split}.json", out, config.dataset.crop_size)


def ensure_lab_dataset_of(config: DictConfig) -> Path:
    """The folder of the config's lab dataset, created on first use."""
    from grpose.lab.data import ensure_lab_dataset

    spec = config.dataset
    return ensure_lab_dataset(spec.out, spec.num_images, spec.seed, tuple(spec.image_size), spec.val_fraction)


def header(
    config: DictConfig, stage: str, argv: list[str], steps_done: int, extra: dict | None = None
) -> dict[str, str]:
    meta = {
        "stage": stage,
        "steps_done": str(steps_done),
        "command": "python scripts/lab_pretrain.py " + " ".join(argv),
        "config": OmegaConf.to_yaml(config),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def init_from(module: torch.nn.Module, spec: DictConfig, prefixes: dict[str, str], name: str) -> None:
    """Start a stage from the weights of an earlier build (``<stage>.init_from``, e.g. to continue it on another
    machine): each ``prefixes`` entry maps a file key prefix to a submodule name prefix; loaded strictly."""
    path = spec.get("init_from")
    if not path or (Path(spec.work_dir) / "state.pt").is_file():  # a resumed run has its own state
        return
    from grpose.checkpoint import load_into, read_state_dict

    state = read_state_dict(path, config_key=f"{name}.init_from")
    mapped = {}
    for key, value in state.items():
        for file_prefix, module_prefix in prefixes.items():
            if key.startswith(file_prefix):
                mapped[module_prefix + key[len(file_prefix) :]] = value.float()
    load_into(module, mapped, strict=True, source=str(path))
    log.info("%s: initialised from %s", name, path)


def train_stage(name: str, module: torch.nn.Module, step, config: DictConfig) -> torch.nn.Module:
    """``run_loop`` with the stage's config node: steps, learning rate, warm-up, weight decay, EMA, seed, folder."""
    from grpose.lab.loop import run_loop

    spec = config[name]
    return run_loop(
        name,
        module,
        step,
        spec.steps,
        spec.learning_rate,
        spec.work_dir,
        spec.seed,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.get("weight_decay", 0.0),
        ema_decay=spec.get("ema_decay"),
        max_seconds=config.max_seconds,
    )


def stage_autoencoder(config: DictConfig, base: DictConfig, argv: list[str]) -> Path:
    from grpose.lab.autoencoder_stage import autoencoder_step_fn, freeze_encoder, latent_scale_factor
    from grpose.lab.weights import export_weights, prefixed

    spec = config.autoencoder
    images = torch.from_numpy(lab_arrays(config, "training").images)
    torch.manual_seed(spec.seed)
    vae = instantiate(base.vae, "vae")
    init_from(vae, spec, {"first_stage_model.": ""}, "autoencoder")
    vae = vae.to(config.device)
    decoder_only = bool(spec.get("decoder_only", False))
    if decoder_only:
        if not spec.get("init_from") and not (Path(spec.work_dir) / "state.pt").is_file():
            raise ConfigError("autoencoder.decoder_only fine-tunes a trained autoencoder: set autoencoder.init_from")
        freeze_encoder(vae)
    step = autoencoder_step_fn(
        vae, images, batch_size=spec.batch_size, crop=spec.crop, kl_weight=spec.kl_weight, decoder_only=decoder_only
    )
    vae = train_stage("autoencoder", vae, step, config)
    scale = latent_scale_factor(vae, images[:1024])
    log.info("autoencoder: latent scale factor 1/std = %.5f", scale)
    return export_weights(
        prefixed(vae, "first_stage_model."),
        spec.out,
        header(config, "autoencoder", argv, vae.stopped_at_step, {"scale_factor": f"{scale:.5f}"}),
    )


def read_scale_factor(path: str | Path) -> float:
    """The latent scale factor recorded by the autoencoder stage in its weight file's header."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return float(fh.metadata()["scale_factor"])


def load_lab_autoencoder(base: DictConfig, path: str | Path, config_key: str, device: str = "cpu"):
    """The lab autoencoder of ``base.vae`` with the weights of ``path`` (strict), frozen in eval mode."""
    from grpose.checkpoint import load_into, read_state_dict

    vae = instantiate(base.vae, "vae").to(device)
    state = read_state_dict(path, config_key=config_key, what="lab autoencoder (--stage autoencoder)")
    load_into(vae, {k.removeprefix("first_stage_model."): v for k, v in state.items()}, strict=True, source=str(path))
    return vae.eval().requires_grad_(False)


def round_trips_of(config: DictConfig, base: DictConfig, images: np.ndarray) -> np.ndarray:
    """``images`` through the autoencoder of ``estimator.round_trip_autoencoder`` (docs/lab.md §3), computed once
    and cached in the stage's work_dir under the hashes of the weight file and of the images, so a resumed stage
    reuses them."""
    from grpose.lab.estimator_stage import autoencoder_round_trip

    spec = config.estimator
    path = Path(spec.round_trip_autoencoder)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"
    images_digest = hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()[:10]  # another dataset: recompute
    cache = Path(spec.work_dir) / f"round_trips_{digest}_{len(images)}_{images_digest}.npy"
    if cache.is_file():
        return np.load(cache)
    vae = load_lab_autoencoder(base, path, "estimator.round_trip_autoencoder", config.device)
    started = time.time()
    round_trips = autoencoder_round_trip(vae, images)
    log.info("estimator: %d round trips through %s in %.0f s", len(images), path, time.time() - started)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, round_trips)
    return round_trips


def stage_unet(config: DictConfig, base: DictConfig, argv: list[str]) -> Path:
    from grpose.lab.base_stage import BaseModel, base_step_fn, latent_moments
    from grpose.lab.weights import export_weights, prefixed

    spec = config.unet
    arrays = lab_arrays(config, "training")
    ae_file = config.autoencoder.out
    vae = load_lab_autoencoder(base, ae_file, "autoencoder.out", config.device)
    scale = read_scale_factor(ae_file)
    means, stds = latent_moments(vae, torch.from_numpy(arrays.images))
    torch.manual_seed(spec.seed)
    model = BaseModel(instantiate(base.unet, "unet"), instantiate(base.text_encoder, "text_encoder"))
    init_from(model, spec, {"model.diffusion_model.": "unet.", "cond_stage_model.": "text_encoder."}, "unet")
    model = model.to(config.device)
    step = base_step_fn(
        model,
        means,
        stds,
        arrays.prompts,
        spec.batch_size,
        scale,
        spec.caption_dropout,
        base.timesteps,
        base.linear_start,
        base.linear_end,
    )
    model = train_stage("unet", model, step, config)
    weights = {**prefixed(model.unet, "model.diffusion_model."), **prefixed(model.text_encoder, "cond_stage_model.")}
    return export_weights(
        weights, spec.out, header(config, "unet", argv, model.stopped_at_step, {"scale_factor": f"{scale:.5f}"})
    )


def stage_estimator(config: DictConfig, base: DictConfig, argv: list[str]) -> Path:
    from grpose.lab.estimator_stage import estimator_step_fn
    from grpose.lab.weights import export_weights
    from grpose.pose.estimator import BottomUpPoseEstimator

    spec = config.estimator
    arrays = lab_arrays(config, "training")
    torch.manual_seed(spec.seed)
    estimator = BottomUpPoseEstimator(
        arch=spec.arch,
        checkpoint=None,
        allow_random_init=True,
        width_mult=spec.width_mult,
        head_channels=spec.head_channels,
        input_size=spec.input_size,
        device=config.device,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        estimator.model = type(estimator.model)(spec.width_mult, head_channels=spec.head_channels)
    init_from(estimator.model, spec, {"": ""}, "estimator")
    estimator.model.to(config.device)
    fraction = float(spec.get("round_trip_fraction", 0.0))
    step = estimator_step_fn(
        estimator,
        arrays.images,
        arrays.poses,
        batch_size=spec.batch_size,
        sigma=spec.sigma,
        tag_weight=spec.tag_weight,
        keypoint_threshold=spec.keypoint_threshold,
        round_trips=round_trips_of(config, base, arrays.images) if fraction > 0 else None,
        round_trip_fraction=fraction,
    )
    model = train_stage("estimator", estimator.model, step, config)
    return export_weights(model.state_dict(), spec.out, header(config, "estimator", argv, model.stopped_at_step))


def ceiling(
    config: DictConfig,
    base: DictConfig,
    eval_config: str,
    num_images: int | None,
    device: str,
    through_autoencoder: str | None = None,
    breakdown: bool = False,
) -> dict:
    """The lab estimator's AP on held-out real images (docs/lab.md §3), read through the evaluation config; with
    ``through_autoencoder`` (a lab autoencoder file) on their round trips through it instead."""
    from grpose.lab.ceiling import estimator_ceiling
    from grpose.lab.estimator_stage import autoencoder_round_trip

    node = load_config(eval_config).pose_estimator
    node.params.device = device
    estimator = instantiate(node, "pose_estimator")
    transform, what = None, "real"
    if through_autoencoder:
        vae = load_lab_autoencoder(base, through_autoencoder, "--through_autoencoder", device)
        transform, what = (lambda images: autoencoder_round_trip(vae, images)), f"round-tripped ({through_autoencoder})"
    out = ensure_lab_dataset_of(config)
    row = estimator_ceiling(
        estimator,
        out / "mapping_file_validation.json",
        out,
        config.dataset.crop_size,
        num_images,
        transform=transform,
        breakdown=breakdown,
    )
    log.info(
        "estimator %s on %d %s held-out images: AP %.3f", node.params.checkpoint, row["num_images"], what, row["ap"]
    )
    return row


def occlusion(config: DictConfig) -> dict:
    """``occlusion_oracle`` of the held-out crops of the config's lab dataset, redrawn in memory with person masks
    (the same draws as the files on disk)."""
    from grpose.data.synthetic import synthetic_samples
    from grpose.lab.occlusion import occlusion_oracle

    spec = config.dataset
    samples = synthetic_samples(spec.num_images, spec.seed, tuple(spec.image_size), spec.val_fraction, masks=True)
    return occlusion_oracle((s for s in samples if s.validation), spec.crop_size)


def smoke_config(config: DictConfig, out: Path) -> DictConfig:
    """A few steps of every stage on a small dataset in ``out`` (the builders' smoke test)."""
    config = config.copy()
    config.dataset.out = str(out / "data")
    config.dataset.num_images = 24
    for name in STAGES:
        node = config[name]
        node.steps, node.batch_size = 2, 2
        node.warmup_steps = 1
        node.work_dir = str(out / name)
        node.out = str(out / f"{name}.safetensors")
    return config


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/lab/pretrain.yaml")
    p.add_argument("--stage", choices=(*STAGES, "all"), default=None, help="the stage to train")
    p.add_argument(
        "--ceiling",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="N",
        help="instead of training: the estimator's AP on the first N held-out real images (all when N is omitted),"
        " with the evaluation settings of --eval_config",
    )
    p.add_argument("--eval_config", default="configs/lab/eval.yaml", help="its pose_estimator node (--ceiling)")
    p.add_argument(
        "--through_autoencoder",
        default=None,
        metavar="FILE",
        help="--ceiling on the images' round trips through this lab autoencoder (models/lab/autoencoder.safetensors)",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="--ceiling also splits the lost AP into extra detections, grouping and localisation (docs/metrics.md §10)",
    )
    p.add_argument(
        "--occlusion",
        action="store_true",
        help="instead of training: how many annotated joints of the held-out crops lie under another figure, and the"
        " AP of an estimator exact on visible joints that misses hidden ones (docs/lab.md §1)",
    )
    p.add_argument("--device", default="cpu", help="cpu (the reference build) or cuda")
    p.add_argument("--max_minutes", type=float, default=None, help="per-stage time budget (stops early, resumable)")
    p.add_argument("--smoke", default=None, metavar="DIR", help="2 steps per stage on a tiny dataset in DIR")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. unet.steps=100")
    args = p.parse_args(argv)
    if [args.stage is not None, args.ceiling is not None, args.occlusion].count(True) != 1:
        p.error("give exactly one of --stage, --ceiling and --occlusion")
    if args.breakdown and args.ceiling is None:
        p.error("--breakdown goes with --ceiling")
    configure_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, overrides=args.overrides)
        base = load_config(config.base_config)
    except ConfigError as err:
        raise SystemExit(str(err)) from err
    if args.smoke:
        config = smoke_config(config, Path(args.smoke))
    if args.occlusion:
        print(json.dumps(occlusion(config), indent=1))
        return 0
    if args.ceiling is not None:
        row = ceiling(
            config,
            base,
            eval_config=args.eval_config,
            num_images=args.ceiling or None,
            device=args.device,
            through_autoencoder=args.through_autoencoder,
            breakdown=args.breakdown,
        )
        print(json.dumps(row, indent=1))
        return 0
    config.device = args.device
    config.max_seconds = args.max_minutes * 60 if args.max_minutes else None
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 throughout: the same arithmetic as the CPU build
        torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(int(config.threads))
    np.seterr(all="ignore")
    stages = STAGES if args.stage == "all" else (args.stage,)
    written = {}
    for name in stages:
        fn = {"autoencoder": stage_autoencoder, "unet": stage_unet, "estimator": stage_estimator}[name]
        try:
            written[name] = str(fn(config, base, argv))
        except ConfigError as err:
            raise SystemExit(str(err)) from err
        log.info("%s: wrote %s", name, written[name])
    print(json.dumps(written, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
