"""Evaluate pose alignment (and optionally image quality) of a GRPose/ControlNet checkpoint on one or many devices.

    python eval_pose.py --config_model configs/grpose/humanart.yaml --ckpt experiments/.../last.ckpt --devices 8
    torchrun --nproc_per_node 8 eval_pose.py --config_model ... --ckpt ...      # same results, same files

Each process generates a deterministic share of the test entries (seed per image from --seed and the entry id),
detects people with HigherHRNet and appends one line per image to its results shard. Rerunning the same command
skips finished entries. Rank 0 merges the shards and scores the whole set (grpose.metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from grpose.cli import configure_logging
from grpose.config import ConfigError, instantiate, load_config, split_overrides
from grpose.trust import add_trust_argument, honours_trust_flag

log = logging.getLogger("grpose.eval")
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
    p.add_argument("--devices", type=int, default=1, help="processes to spawn (ignored under torchrun)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--outdir", default="outputs")
    p.add_argument("--run", default=None, help="run name (default: the checkpoint's file name)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N entries (sorted by id)")
    p.add_argument("--no_panels", action="store_true", help="do not write the image panels")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the model config")
    return p


# ---------------------------------------------------------------------------------------------- set-up
def output_dir(args: argparse.Namespace) -> Path:
    model_name = Path(args.config_model[-1]).parent.name or "model"
    run = args.run or (Path(args.ckpt).stem if args.ckpt else Path(args.images_dir).resolve().name)
    return Path(args.outdir) / model_name / run


def test_dataset_params(args: argparse.Namespace, config: DictConfig) -> dict[str, Any]:
    """PoseDataset kwargs of the test set: the config's data.test, with --map_file/--base_dir/--H/--limit."""
    node = config.get("data", {}).get("params", {}).get("test") or config.get("data", {}).get("params", {}).get(
        "validation"
    )
    params = dict(OmegaConf.to_container(node.params, resolve=True)) if node is not None else {}
    if args.map_file:
        params["mapping_file"] = args.map_file
        params["base_dir"] = args.base_dir or str(Path(args.map_file).parent)
    elif args.base_dir:
        params["base_dir"] = args.base_dir
    if "mapping_file" not in params:
        raise SystemExit("no test set: pass --map_file or set data.params.test in the model config")
    if args.H or args.W:
        if (args.H or args.W) != (args.W or args.H):
            raise SystemExit(f"--H {args.H} and --W {args.W} differ; the test images are square crops")
        params["image_size"] = args.H or args.W
    params.update(train=False, caption_dropout=0.0, on_error="raise")
    return params


def preflight(
    args: argparse.Namespace, config: DictConfig, metrics_config: DictConfig, out_dir: Path, rank: int = 0
) -> None:
    """Fail clearly, before any long work: unwritable output, missing weights, broken map file entries."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_test.rank{rank}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"--outdir: cannot write to {out_dir}: {err}; choose a writable directory") from err
    if args.images_dir:
        if not Path(args.images_dir).is_dir():
            raise SystemExit(f"--images_dir: not a directory: {args.images_dir}")
    elif not args.ckpt:
        raise SystemExit("pass --ckpt (a checkpoint to sample with) or --images_dir (generated images to score)")
    else:
        check_checkpoint_fits(args, config)
    if args.base_model and not Path(args.base_model).is_file():
        raise SystemExit(f"--base_model: checkpoint not found: {args.base_model}")
    if args.metrics in ("pose", "all"):
        params = metrics_config.pose_estimator.get("params", {})
        ckpt = params.get("checkpoint")
        if ckpt is None and not params.get("allow_random_init", False):
            raise SystemExit(f"{args.config_metrics}: pose_estimator.params.checkpoint is not set")
        if ckpt is not None and not Path(ckpt).is_file():
            raise SystemExit(
                f"pose estimator weights not found: {ckpt} (config key pose_estimator.params.checkpoint in "
                f"{args.config_metrics}); expected the HigherHRNet-W48 UDP Human-Art checkpoint "
                "higherhrnet_w48_humanart_512x512_udp.pth, see models/README.md"
            )
    params = test_dataset_params(args, config)
    mapping_file = Path(params["mapping_file"])
    if not mapping_file.is_file():
        raise SystemExit(f"--map_file: mapping file not found: {mapping_file}")
    base = Path(params.get("base_dir") or mapping_file.parent)
    mapping = json.loads(mapping_file.read_text())
    ids = sorted(mapping)[: args.limit] if args.limit else sorted(mapping)
    problems = []
    for entry_id in ids:
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
            f"{mapping_file}: {len(problems)} problem(s) in the test set:\n  {shown}\n"
            "fix the entries (scripts/check_dataset.py lists them all) or pass --limit"
        )


def check_checkpoint_fits(args: argparse.Namespace, config: DictConfig) -> None:
    """Compare --ckpt's keys and shapes with the model of the config, built on the meta device (no weights read)."""
    import torch

    from grpose.checkpoint import CheckpointError, load_into, read_state_dict
    from grpose.export import read_export_metadata

    if read_export_metadata(args.ckpt) is not None:  # trained weights only: checked when joined with the base
        if not args.base_model:
            raise SystemExit(f"--ckpt {args.ckpt} holds only trained weights: give their base as --base_model")
        return
    with torch.device("meta"):
        model = instantiate(config.model, "model")
    try:
        what = "a GRPose/ControlNet checkpoint"
        use_ema = getattr(args, "use_ema", False)
        state_dict = read_state_dict(args.ckpt, config_key="--ckpt", what=what, use_ema=use_ema)
        load_into(model, state_dict, strict=True, ignore=("mmpose_model.",), source=args.ckpt)
    except CheckpointError as err:
        raise SystemExit(f"--ckpt does not fit the model config {args.config_model}: {err}") from err


def load_model(args: argparse.Namespace, config: DictConfig, device):
    """Build the model from its config, load --ckpt strictly (mmpose_model.* ignored), optionally swap SD weights."""
    from grpose.checkpoint import CheckpointError, load_into, read_state_dict
    from grpose.export import load_trained_weights_with_base, read_export_metadata

    model = instantiate(config.model, "model")
    try:
        if read_export_metadata(args.ckpt) is not None:  # scripts/export_adapter.py output: joined with its base
            summary = load_trained_weights_with_base(model, args.ckpt, args.base_model)
            log.info("loaded %s with base %s: %s", args.ckpt, args.base_model, summary)
        else:
            state_dict = read_state_dict(args.ckpt, use_ema=getattr(args, "use_ema", False))
            report = load_into(model, state_dict, strict=True, ignore=("mmpose_model.",), source=args.ckpt)
            log.info("loaded %s: %s", args.ckpt, report.summary())
            if args.base_model:
                swap_base_model(model, args.base_model)
    except CheckpointError as err:
        raise SystemExit(f"--ckpt/--base_model does not fit the model config {args.config_model}: {err}") from err
    if getattr(args, "fast", False):
        model.configure_speed(
            frozen_dtype="bf16",
            knn_backend="auto",
            sample_cache_pose=True,
            sample_cuda_graph=True,
            cudnn_benchmark=True,
            channels_last=True,
            compile_blocks=True,
        )
    return model.to(device).eval()


def swap_base_model(model, path: str) -> None:
    """Load another SD1.5-layout checkpoint into the frozen parts only and report what was replaced."""
    from grpose.checkpoint import CheckpointError, read_state_dict

    state_dict = read_state_dict(path, config_key="--base_model", what="an SD1.5-layout checkpoint")
    frozen_prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
    own = model.state_dict()
    replaced: dict[str, int] = {}
    subset = {}
    for key, value in state_dict.items():
        if key.startswith(frozen_prefixes) and key in own:
            if own[key].shape != value.shape:
                raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, model {tuple(own[key].shape)}")
            subset[key] = value
            replaced[key.split(".")[0]] = replaced.get(key.split(".")[0], 0) + 1
    if not subset:
        raise CheckpointError(f"{path} holds no model.diffusion_model/first_stage_model/cond_stage_model keys")
    model.load_state_dict(subset, strict=False)
    log.info("--base_model %s replaced %s", path, ", ".join(f"{k}: {n} tensors" for k, n in sorted(replaced.items())))


# ---------------------------------------------------------------------------------------------- generation
def make_panel(generated: np.ndarray, skeleton: np.ndarray, prompt: str, truth: np.ndarray) -> np.ndarray:
    """[generated | skeleton | prompt | ground truth], each H x H (the layout scripts/eval_quality.py reads)."""
    import textwrap

    from PIL import Image, ImageDraw

    h, w = generated.shape[:2]
    text = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(text)
    draw.multiline_text((4, 4), "\n".join(textwrap.wrap(prompt, width=max(8, w // 7))), fill=(0, 0, 0))
    return np.concatenate([generated, skeleton, np.asarray(text), truth], axis=1)


def detections_to_json(people: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "keypoints": np.asarray(people["keypoints"], dtype=np.float32).round(3).tolist(),
        "scores": np.asarray(people["scores"], dtype=np.float32).round(6).tolist(),
    }


def generate_shard(args, config, metrics_config, out_dir: Path, rank: int, world_size: int, device) -> None:
    """Generate, detect and record this rank's share of the entries not yet in its results shard."""
    import torch
    from tqdm import tqdm

    from grpose.data.pose_dataset import PoseDataset
    from grpose.eval_results import append_results, image_seed, read_results, shard_batches, shard_path
    from grpose.pose.skeleton import render_skeleton
    from grpose.validation import to_uint8

    dataset = PoseDataset(**test_dataset_params(args, config))
    ids = sorted(dataset.ids)[: args.limit] if args.limit else sorted(dataset.ids)
    index_of = {entry_id: i for i, entry_id in enumerate(dataset.ids)}
    results_path = shard_path(out_dir, rank)
    done = {r["id"] for p in out_dir.glob("results.rank*.jsonl") for r in read_results(p, repair=p == results_path)}
    todo = [batch for batch in shard_batches(ids, args.batch_size, rank, world_size) if not set(batch) <= done]
    if not todo:
        return
    model = None if args.images_dir else load_model(args, config, device)
    estimator = None
    if args.metrics in ("pose", "all"):
        params = {"channel_order": "bgr" if args.protocol == "released" else "rgb", "device": str(device)}
        estimator = instantiate(metrics_config.pose_estimator, "pose_estimator", **params)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(total=sum(map(len, todo)), desc=f"rank {rank}", unit="img", disable=rank != 0, dynamic_ncols=True)
    for batch_ids in todo:  # a partly written batch (killed run) is regenerated whole, its done records not rewritten
        samples = [dataset[index_of[i]] for i in batch_ids]
        if args.images_dir:
            generated = np.stack([load_generated(Path(args.images_dir), s) for s in samples])
            people = estimator(list(generated)) if estimator is not None else [None] * len(samples)
            append_results(results_path, [record_of(s, g, d, args) for s, g, d in zip(samples, generated, people)
                                          if s["id"] not in done])  # fmt: skip
            bar.update(len(batch_ids))
            continue
        hint = torch.stack([torch.from_numpy(s["hint"]) for s in samples]).permute(0, 3, 1, 2).to(device)
        noise = torch.stack(
            [
                torch.randn((4, hint.shape[2] // 8, hint.shape[3] // 8), generator=torch.Generator().manual_seed(seed))
                for seed in (image_seed(args.seed, i) for i in batch_ids)
            ]
        ).to(device)
        with torch.no_grad(), autocast:
            images = model.sample(
                hint,
                [s["txt"] for s in samples],
                noise=noise,
                num_steps=args.ddim_steps,
                guidance_scale=args.scale,
                eta=args.ddim_eta,
                generator=torch.Generator(device=device).manual_seed(image_seed(args.seed, batch_ids[0])),
            )
        generated = to_uint8(images, args.protocol)
        people = estimator(list(generated)) if estimator is not None else [None] * len(samples)
        records = []
        for sample, image, detected in zip(samples, generated, people):
            if not args.no_panels:
                save_panel(out_dir, sample, image, render_skeleton, args)
            if sample["id"] not in done:
                records.append(record_of(sample, image, detected, args))
        append_results(results_path, records)
        bar.update(len(batch_ids))
    bar.close()


def record_of(sample: dict[str, Any], image: np.ndarray, detected: dict | None, args) -> dict[str, Any]:
    """One results.jsonl line: the entry, its seed, the ground-truth poses and the detections."""
    from grpose.eval_results import image_seed

    gt = sample["pose"]
    record = {
        "id": sample["id"],
        "scene": sample["scene"],
        "img_path": sample["img_path"],
        "prompt": sample["txt"],
        "seed": image_seed(args.seed, sample["id"]),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "gt": np.asarray(gt, dtype=np.float32).round(3).tolist(),
        "num_gt": int((gt[:, :, 0] > 0).any(axis=1).sum()),
    }
    if detected is not None:
        record["detections"] = detections_to_json(detected)
        record["num_det"] = len(record["detections"]["scores"])
    return record


def load_generated(images_dir: Path, sample: dict[str, Any]) -> np.ndarray:
    """The generated image of an entry from ``images_dir/<scene>/<name>.*`` as uint8 RGB at the test image size.

    An eval panel (width = 4 x height) is cut to its first square; other sizes are resized to the dataset's crop
    size, in whose coordinates the ground-truth poses are.
    """
    from PIL import Image

    stem = Path(sample["img_path"]).stem
    candidates = [images_dir / sample["scene"] / f"{stem}{ext}" for ext in (".jpg", ".png", ".jpeg", ".webp")]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise SystemExit(f"--images_dir: no generated image for entry {sample['id']} (looked for {candidates[0]})")
    image = Image.open(path).convert("RGB")
    if image.width == 4 * image.height:
        image = image.crop((0, 0, image.height, image.height))
    size = sample["jpg"].shape[0]
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image)


def save_panel(out_dir: Path, sample: dict, image: np.ndarray, render_skeleton, args) -> None:
    from PIL import Image

    h, w = image.shape[:2]
    skeleton = render_skeleton(sample["pose"], h, w)
    truth = np.clip((sample["jpg"] + 1) * 127.5, 0, 255).round().astype(np.uint8)
    panel = make_panel(image, skeleton, sample["txt"], truth)
    path = out_dir / "images" / sample["scene"] / (Path(sample["img_path"]).stem + ".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(path, quality=95)


# ---------------------------------------------------------------------------------------------- scoring
def score(args, config, metrics_config, out_dir: Path, ids: list[str]) -> dict[str, Any]:
    """Merge all shards and compute the metrics over the whole set; write metrics.json and metrics.csv.

    ``ids`` is in map-file order: whole-set metrics do not depend on it, the per-batch rows (``*_batch_mean``)
    follow it, as the released DataLoader (shuffle off) did.
    """
    from grpose.eval_results import merge_results

    position = {entry_id: i for i, entry_id in enumerate(ids)}
    records = sorted(merge_results(out_dir, ids), key=lambda r: position[r["id"]])
    metrics: dict[str, Any] = {
        "protocol": args.protocol,
        "num_images": len(records),
        "checkpoint": str(args.ckpt),
        "config": list(args.config_model),
        "seed": args.seed,
        "ddim_steps": args.ddim_steps,
        "scale": args.scale,
        "metric_batch_size": args.metric_batch_size,
    }
    if args.metrics in ("pose", "all"):
        from grpose.metrics.pose import evaluate_pose_alignment, per_scene

        gt = [np.asarray(r["gt"], dtype=np.float32) for r in records]
        dets = [
            {
                "keypoints": np.asarray(r["detections"]["keypoints"], dtype=np.float32).reshape(-1, 17, 3),
                "scores": np.asarray(r["detections"]["scores"], dtype=np.float32),
            }
            for r in records
        ]
        heights = [r["height"] for r in records]
        widths = [r["width"] for r in records]
        ids = [r["id"] for r in records]
        common = dict(protocol=args.protocol, batch_size=args.metric_batch_size, image_ids=ids)
        metrics["pose"] = evaluate_pose_alignment(gt, dets, heights, widths, **common)
        metrics["pose_per_scene"] = per_scene([r["scene"] for r in records], gt, dets, heights, widths, **common)
    if args.metrics in ("quality", "all"):
        metrics["quality"] = quality_metrics(args, config, metrics_config, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    write_csv(out_dir / "metrics.csv", metrics)
    return metrics


def quality_metrics(args, config, metrics_config: DictConfig, out_dir: Path) -> dict[str, Any]:
    """FID/KID per scene and pooled, and CLIP-score, of the generated panels (scripts/eval_quality.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_quality", Path(__file__).parent / "scripts/eval_quality.py")
    eval_quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_quality)
    quality = metrics_config.get("quality", {})
    params = test_dataset_params(args, config)
    argv = [
        "--images",
        str(out_dir),
        "--real_map",
        str(params["mapping_file"]),
        "--out",
        str(out_dir / "metrics_quality.json"),
    ]
    if params.get("base_dir"):
        argv += ["--base", str(params["base_dir"])]
    if quality.get("inception"):
        argv += ["--inception", str(quality.inception)]
    if quality.get("clip"):
        argv += ["--clip", str(quality.clip), "--clip_model", str(quality.get("clip_arch", "ViT-B-16-quickgelu"))]
    for key, flag in (("fid_features", "--fid_feature"), ("kid_subset_size", "--kid_subset_size")):
        if quality.get(key) is not None:
            argv += [flag, str(quality[key])]
    return eval_quality.main(argv)


def write_csv(path: Path, metrics: dict[str, Any]) -> None:
    rows = [("all", metrics.get("pose", {}))] + sorted(metrics.get("pose_per_scene", {}).items())
    keys = sorted({k for _, m in rows for k, v in m.items() if isinstance(v, int | float)})
    lines = ["scene," + ",".join(keys)]
    lines += [f"{scene}," + ",".join(f"{m.get(k, '')}" for k in keys) for scene, m in rows]
    path.write_text("\n".join(lines) + "\n")


def print_table(metrics: dict[str, Any]) -> None:
    pose = metrics.get("pose", {})
    shown = ["ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "cap", "cap_corrected", "pce", "ap_batch_mean"]
    print(f"protocol: {metrics['protocol']}   images: {metrics['num_images']}")
    print(" ".join(f"{k:>13}" for k in shown if k in pose))
    print(" ".join(f"{pose[k]:>13.4f}" for k in shown if k in pose))
    for key, value in metrics.get("quality", {}).items():
        if isinstance(value, int | float):
            print(f"{key}: {value:.4f}")


# ---------------------------------------------------------------------------------------------- processes
def run_rank(rank: int, world_size: int, args: argparse.Namespace) -> dict[str, Any] | None:
    import torch
    import torch.distributed as dist

    config = load_config(*args.config_model, overrides=args.overrides)
    metrics_config = load_config(args.config_metrics) if args.metrics != "none" else OmegaConf.create({})
    use_cuda = args.accelerator != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    out_dir = output_dir(args)
    generate_shard(args, config, metrics_config, out_dir, rank, world_size, device)
    if world_size > 1:
        dist.barrier()
    metrics = None
    if rank == 0:
        mapping = json.loads(Path(test_dataset_params(args, config)["mapping_file"]).read_text())
        chosen = set(sorted(mapping)[: args.limit] if args.limit else mapping)
        metrics = score(args, config, metrics_config, out_dir, [i for i in mapping if i in chosen])
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def _spawned(rank: int, world_size: int, args: argparse.Namespace, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    configure_logging(f"%(levelname)s rank{rank} %(name)s: %(message)s")
    run_rank(rank, world_size, args)


@honours_trust_flag
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config_model, args.overrides = split_overrides(args.config_model, args.overrides)
    configure_logging("%(levelname)s %(name)s: %(message)s")
    started = time.time()
    try:
        config = load_config(*args.config_model, overrides=args.overrides)
        metrics_config = load_config(args.config_metrics) if args.metrics != "none" else OmegaConf.create({})
    except ConfigError as err:
        raise SystemExit(str(err)) from err
    out_dir = output_dir(args)
    under_launcher = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    preflight(args, config, metrics_config, out_dir, rank)  # every rank: a failure must not leave others waiting
    if under_launcher:
        metrics = run_rank(rank, int(os.environ["WORLD_SIZE"]), args)
    elif args.devices > 1:
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_spawned, args=(args.devices, args, port), nprocs=args.devices, join=True)
        metrics = json.loads((out_dir / "metrics.json").read_text())
    else:
        metrics = run_rank(0, 1, args)
    if rank == 0 and metrics is not None:
        print_table(metrics)
        print(f"results: {out_dir}  (metrics.json, metrics.csv, results.rank*.jsonl)")
        print(f"total time: {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
