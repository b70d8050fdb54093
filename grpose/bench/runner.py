"""GRPose benchmark suite (README targets): training step, sampling, pose estimator, graph layer, data, eval estimate.

    python scripts/benchmark.py --suite cpu --out bench_cpu.json            # tiny model on CPU, < 10 min on 2 cores
    python scripts/benchmark.py --suite gpu --out bench_gpu.json [--compile] # SD1.5-size GRPose, bf16, one GPU
    python scripts/benchmark.py --suite cpu --smoke --out /tmp/b.json       # one step of everything (the test)

Prints one table per section and writes JSON: ``machine`` plus one key per section (``train``, ``sample``, ``pose``,
``graph``, ``data``, ``eval``), each a dict keyed by suite (``cpu``/``gpu``). Times are medians after warm-up;
GPU peak memory is ``torch.cuda.max_memory_allocated``, CPU peak memory the process's peak RSS (VmHWM, reset
before each measurement through /proc/self/clear_refs). FLOPs come from torch.utils.flop_counter (matmuls,
convolutions, attention; on CPU the flash-attention kernel is not counted, so CPU FLOPs are a lower bound).
The pose estimator, GCN and dataset numbers come from scripts/benchmark_{pose,graph,data}.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchmark_data import benchmark_dataset, make_benchmark_images  # noqa: E402
from benchmark_graph import benchmark_gcn  # noqa: E402
from benchmark_pose import benchmark_pose_estimator  # noqa: E402
from benchmark_report import SECTIONS, check_targets, print_report, row_text  # noqa: E402

from grpose.config import instantiate, load_config  # noqa: E402

TINY = ROOT / "configs/grpose/tiny.yaml"
REAL = ROOT / "configs/grpose/humanart.yaml"
REAL_POSELOSS = ROOT / "configs/grpose/humanart_poseloss.yaml"
HUMANART_EVAL_IMAGES = 4750
# Sections beyond benchmark_report.SECTIONS: "speed" runs scripts/benchmark_speed.py (GPU only, about 6 min).
OPTIONAL_SECTIONS = ("speed",)
# Dense bf16 tensor-core peak FLOP/s by device name (vendor datasheets; SXM parts).
BF16_PEAK = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12))
# Real PGI levels of configs/grpose/humanart.yaml: (channels, feature-map size) at 512 px (64x64 latents).
GCN_LEVELS = ((320, 64), (640, 32), (1280, 16), (1280, 8))
CHECKPOINT_OVERRIDES = (
    "model.params.unet.params.use_checkpoint=true",
    "model.params.adapter.params.use_checkpoint=true",
)
# The real configs checkpoint the adapter (as released): "off" must say so explicitly.
NO_CHECKPOINT_OVERRIDES = (
    "model.params.unet.params.use_checkpoint=false",
    "model.params.adapter.params.use_checkpoint=false",
)
POSE_NET_OVERRIDES = (
    "model.params.pose_feature_network.params.checkpoint=null",
    "model.params.pose_feature_network.params.allow_random_init=true",
)
TINY_POSELOSS_OVERRIDES = (
    "model.params.pose_feature_network.target=grpose.pose.features.PoseFeatureNetwork",
    "model.params.pose_feature_network.params.checkpoint=null",
    "model.params.pose_feature_network.params.allow_random_init=true",
    "model.params.pose_feature_network.params.flip=true",
    "model.params.percept_loss_weight=0.5",
)


# ---------------------------------------------------------------------------------------------- machine and memory
def machine_info() -> dict[str, Any]:
    """CPU model, threads, GPU, versions and the current load (the CPU numbers depend on it)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": None,
        "gpu_memory_gib": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, gpu_bf16_peak_flops=bf16_peak(props.name)
        )
    return info


def bf16_peak(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a known GPU, else None."""
    for key, peak in BF16_PEAK:
        if key.lower() in device_name.lower():
            return peak
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator peak, or the process's peak RSS on CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall times of ``repeats`` calls after ``warmup`` calls; the device is synchronised only around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- model and batch
def build_model(config_paths: Sequence[Path], overrides: Sequence[str], device: torch.device) -> torch.nn.Module:
    """Instantiate the GRPose LightningModule with random weights directly on ``device``.

    Construction runs under ``torch.device(device)``, so the default initialisation of the 1.5 B parameters runs
    on the GPU (seconds) rather than the CPU; buffers made from NumPy are moved by ``.to``. Zero-initialised
    weights (zero convs, UNet ``out``) get small random values so every adapter parameter receives a gradient.
    """
    config = load_config(*config_paths, overrides=list(overrides))
    with torch.device(device):
        model = instantiate(config.model, "model")
    model.to(device)
    if model.pose_feature_network is not None:
        model.pose_feature_network.to(device)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1 and not bool(param.any()):
                param.normal_(0.0, 1e-3)
    return model


def synthetic_batch(batch_size: int, image_size: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """A dataset-shaped batch: jpg/hint (B,H,W,3) in [-1,1] (hint: black with coloured limb boxes), txt, pose."""
    gen = torch.Generator().manual_seed(seed)
    jpg = torch.rand(batch_size, image_size, image_size, 3, generator=gen) * 2 - 1
    hint = torch.full((batch_size, image_size, image_size, 3), -1.0)
    for b in range(batch_size):  # a few bright strokes so the pose masks are not empty
        for _ in range(6):
            y, x = torch.randint(0, image_size * 7 // 8, (2,), generator=gen).tolist()
            hint[b, y : y + image_size // 8, x : x + image_size // 32] = torch.rand(3, generator=gen) * 2 - 1
    pose = torch.rand(batch_size, 10, 17, 3, generator=gen) * image_size
    return {
        "jpg": jpg.to(device),
        "hint": hint.to(device),
        "txt": [f"a photo of a dancer number {i}, high quality" for i in range(batch_size)],
        "pose": pose.to(device),
        "img_path": [f"synthetic/{i:06d}.jpg" for i in range(batch_size)],
    }


def _host_syncs(fn: Callable[[], Any], device: torch.device) -> dict[str, Any] | None:
    """Host-device synchronisations during ``fn`` (CUDA sync debug mode), with the Python sites that caused them."""
    if device.type != "cuda":
        return None
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    return {"count": len(sites), "sites": sorted(set(sites))}


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched below autograd (forward and backward); most are one kernel launch each."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.count += 1
        return func(*args, **(kwargs or {}))


def _count_flops(fn: Callable[[], Any]) -> tuple[int | None, int | None]:
    """(FLOPs, dispatched aten ops) of one call; the op count shows how launch-bound a step is."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, _OpCounter() as ops:
            fn()
    except Exception as err:  # noqa: BLE001 - a counting failure must not sink the timing numbers
        print(f"  flop counting failed: {type(err).__name__}: {err}", flush=True)
        return None, None
    return int(counter.get_total_flops()), ops.count


# ---------------------------------------------------------------------------------------------- 1. training step
def _forward_backward(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> None:
    with _autocast(device):
        terms = model.compute_losses(batch)
        loss = sum(terms.values()).mean()
    loss.backward()


def _train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], device: torch.device
) -> None:
    """One optimisation step as Lightning runs it: zero_grad, compute_losses + backward, AdamW step."""
    optimizer.zero_grad(set_to_none=True)
    _forward_backward(model, batch, device)
    optimizer.step()


def bench_train(
    device: torch.device,
    config_paths: Sequence[Path],
    overrides: Sequence[str],
    batch_sizes: Sequence[int],
    image_size: int,
    repeats: int,
    warmup: int,
    label: dict[str, Any],
    model_flops: dict[tuple[int, bool], int],
) -> list[dict[str, Any]]:
    """compute_losses + backward + AdamW step of one model config at each batch size.

    ``model_flops`` caches the FLOPs counted without activation checkpointing per (batch, pose loss), so MFU of a
    checkpointed run uses model FLOPs, not the recomputation.
    """
    rows = []
    torch.manual_seed(0)
    model = build_model(config_paths, overrides, device)
    model.train()
    optimizer = model.configure_optimizers()
    peak_flops = bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    for batch_size in batch_sizes:
        row: dict[str, Any] = {**label, "batch": batch_size, "image_size": image_size}
        batch = synthetic_batch(batch_size, image_size, device)

        forward_backward = functools.partial(_forward_backward, model, batch, device)
        step = functools.partial(_train_step, model, optimizer, batch, device)

        try:
            _reset_peak(device)
            times = _timed(step, device, repeats, warmup)
            peak = _peak_bytes(device)
            optimizer.zero_grad(set_to_none=True)
            key = (batch_size, bool(label.get("pose_loss")))
            # on GPU a checkpointed run reuses the model FLOPs of its plain twin (saves a slow counted step)
            recount = not (device.type == "cuda" and label.get("checkpointing") and key in model_flops)
            flops, aten_ops = _count_flops(forward_backward) if recount else (None, None)
            optimizer.zero_grad(set_to_none=True)
            if not label.get("checkpointing") and flops is not None:
                model_flops[key] = flops
            step_s = statistics.median(times)
            syncs = _host_syncs(step, device) if batch_size == batch_sizes[0] else None
            if syncs is not None:
                row.update(host_syncs=syncs["count"], host_sync_sites=syncs["sites"])
            row.update(
                step_s=step_s,
                samples_per_s=batch_size / step_s,
                peak_memory_gib=peak / 2**30,
                step_flops=flops,
                aten_ops=aten_ops,
                model_flops=model_flops.get(key, flops),
                times_s=times,
            )
            if row["model_flops"]:
                row["achieved_tflops"] = row["model_flops"] / step_s / 1e12
                row["mfu"] = row["model_flops"] / step_s / peak_flops if peak_flops else None
        except torch.OutOfMemoryError as err:
            row["error"] = f"out of memory: {str(err).splitlines()[0]}"
            optimizer.zero_grad(set_to_none=True)
        del batch
        _free(device)
        rows.append(row)
        print("  " + row_text(row), flush=True)
    return rows  # the caller frees the device memory once model and optimizer are out of scope


# ---------------------------------------------------------------------------------------------- 2. sampling
def _sample(
    model: torch.nn.Module,
    hint: torch.Tensor,
    prompts: list[str],
    noise: torch.Tensor,
    device: torch.device,
    steps: int,
) -> None:
    with _autocast(device):
        model.sample(hint, prompts, noise=noise, num_steps=steps, guidance_scale=9.0)


def bench_sample(
    device: torch.device,
    config_paths: Sequence[Path],
    batch_sizes: Sequence[int],
    image_size: int,
    num_steps: int,
    repeats: int,
    warmup: int,
    compile_model: bool,
    label: dict[str, Any],
) -> list[dict[str, Any]]:
    """DDIM ``num_steps`` with CFG (scale 9, negative prompt) + VAE decode; eager and optionally compiled."""
    torch.manual_seed(0)
    model = build_model(config_paths, (), device)
    model.eval()
    rows = []
    for variant in ("eager", "compiled") if compile_model else ("eager",):
        if variant == "compiled":
            try:
                model.unet.compile()
                model.control_model.compile()
            except Exception as err:  # noqa: BLE001 - report and go on without compile
                rows.append({**label, "variant": "compiled", "error": f"{type(err).__name__}: {err}"})
                break
        for batch_size in batch_sizes:
            row: dict[str, Any] = {**label, "variant": variant, "batch": batch_size, "steps": num_steps}
            batch = synthetic_batch(batch_size, image_size, device)
            hint = model.batch_images(batch, "hint")
            noise = torch.randn(batch_size, 4, image_size // 8, image_size // 8, device=device)

            run = functools.partial(_sample, model, hint, batch["txt"], noise, device)

            try:
                start = time.perf_counter()
                for _ in range(warmup):  # a short run warms kernels (and compiles) without 50 full steps
                    run(min(num_steps, 2))
                _sync(device)
                row["warmup_s"] = time.perf_counter() - start
                _reset_peak(device)
                times = _timed(functools.partial(run, num_steps), device, repeats, 0)
                peak = _peak_bytes(device)
                run_s = statistics.median(times)
                syncs = _host_syncs(functools.partial(run, min(num_steps, 2)), device)
                if syncs is not None:
                    row.update(host_syncs=syncs["count"], host_sync_sites=syncs["sites"])
                row.update(
                    run_s=run_s,
                    images_per_s=batch_size / run_s,
                    s_per_image=run_s / batch_size,
                    peak_memory_gib=peak / 2**30,
                    times_s=times,
                )
            except torch.OutOfMemoryError as err:
                row["error"] = f"out of memory: {str(err).splitlines()[0]}"
            except Exception as err:  # noqa: BLE001 - compile failures are reported, not fatal
                if variant != "compiled":
                    raise
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            rows.append(row)
            print("  " + row_text(row), flush=True)
            del batch, hint, noise
            _free(device)
            if "error" in row and variant == "compiled":
                break
    return rows


# ---------------------------------------------------------------------------------------------- 3-5 and 6
def bench_pose(device: torch.device, smoke: bool) -> dict[str, Any]:
    """HigherHRNet-W48 (random weights) network images/s and grouping ms/image at 512 px."""
    if smoke:
        # smoke: the small MobileNetV2 AE model through the same code (HigherHRNet-W48's first CPU call takes ~15 s)
        return benchmark_pose_estimator(str(device), 1, "mobilenetv2", 1, input_size=128, num_people=5, warmup=0)
    if device.type == "cuda":
        return benchmark_pose_estimator(str(device), 64, batch_size=8, input_size=512, warmup=1)
    return benchmark_pose_estimator(str(device), 2, batch_size=1, input_size=512, warmup=1)


def bench_graph(device: torch.device, smoke: bool) -> list[dict[str, Any]]:
    """The GCN block at each PGI level's real size against the gather-based EdgeConv (forward + backward)."""
    if smoke:
        levels, batch, repeats, warmup = ((64, 16),), 2, 1, 0
    elif device.type == "cuda":
        levels, batch, repeats, warmup = GCN_LEVELS, 6, 5, 2
    else:  # CPU: level 1 only (the others take minutes on 2 cores and add little)
        levels, batch, repeats, warmup = GCN_LEVELS[:1], 2, 2, 1
    rows = []
    for channels, size in levels:
        res = benchmark_gcn(channels, size, batch, device=device, repeats=repeats, warmup=warmup)
        row = {
            "channels": channels,
            "size": size,
            "batch": batch,
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
        _free(device)
    return rows


def bench_data(smoke: bool) -> dict[str, Any]:
    """PoseDataset samples/s at 512 px in one worker (cv2 one thread) on Human-Art-sized JPEGs."""
    with tempfile.TemporaryDirectory() as tmp:
        mapping = make_benchmark_images(tmp, 2 if smoke else 8)
        return benchmark_dataset(mapping, tmp, 512, num_samples=2 if smoke else 32, warmup=0 if smoke else 2)


def eval_estimate(sample_rows: list[dict[str, Any]], pose: dict[str, Any] | None, label: str) -> dict[str, Any]:
    """Projected wall time of generating + pose-detecting the 4,750 Human-Art validation images on one device."""
    rates = [r["images_per_s"] for r in sample_rows if "images_per_s" in r and r.get("variant") == "eager"]
    if not rates:
        return {"error": "no sampling numbers"}
    best = max(rates)
    result: dict[str, Any] = {
        "model": label,
        "images": HUMANART_EVAL_IMAGES,
        "sampling_images_per_s": best,
        "sampling_h": HUMANART_EVAL_IMAGES / best / 3600,
    }
    total = result["sampling_h"]
    if pose and "network_images_per_s" in pose:
        pose_s = 1 / pose["network_images_per_s"] + pose["grouping_ms_per_image"] / 1000
        result.update(pose_images_per_s=1 / pose_s, pose_h=HUMANART_EVAL_IMAGES * pose_s / 3600)
        total += result["pose_h"]
    result["total_h"] = total
    return result


# ---------------------------------------------------------------------------------------------- suites
def run_suite(suite: str, sections: Sequence[str], smoke: bool, compile_model: bool) -> dict[str, Any]:
    """Run the selected sections on ``suite`` ('cpu': tiny model; 'gpu': SD1.5-size model, bf16)."""
    gpu = suite == "gpu"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--suite gpu needs a CUDA device (torch.cuda.is_available() is False)")
    device = torch.device("cuda" if gpu else "cpu")
    repeats, warmup = (1, 0) if smoke else ((5, 2) if gpu else (5, 2))
    out: dict[str, Any] = {}
    started: dict[str, float] = {}
    if "train" in sections:
        started["train"] = time.perf_counter()
        print(f"[{suite}] training step", flush=True)
        rows: list[dict[str, Any]] = []
        flops: dict[tuple[int, bool], int] = {}
        if gpu:
            paths, base_overrides, sizes, image_size, model_name = [REAL], [], [1, 2, 6], 512, "sd15-size"
        else:
            paths, base_overrides, sizes, image_size, model_name = [TINY], [], [2], 64, "tiny"
        for pose_loss in (False, True):
            for ckpt in (False, True):
                if smoke and (pose_loss or ckpt) and not (pose_loss and ckpt):
                    continue  # smoke: the plain step and the step with everything on
                cfg = list(paths) + ([REAL_POSELOSS] if (gpu and pose_loss) else [])
                overrides = list(base_overrides) + list(CHECKPOINT_OVERRIDES if ckpt else NO_CHECKPOINT_OVERRIDES)
                if pose_loss:
                    overrides += list(POSE_NET_OVERRIDES) if gpu else list(TINY_POSELOSS_OVERRIDES)
                label = {"model": model_name, "pose_loss": pose_loss, "checkpointing": ckpt}
                label["precision"] = "bf16-autocast" if gpu else "fp32"
                rows += bench_train(
                    device, cfg, overrides, sizes[:1] if smoke else sizes, image_size, repeats, warmup, label, flops
                )
                _free(device)
        out["train"] = rows
    if "sample" in sections:
        started["sample"] = time.perf_counter()
        print(f"[{suite}] sampling (DDIM + CFG)", flush=True)
        steps = 1 if smoke else 50
        label = {"model": "sd15-size" if gpu else "tiny", "image_size": 512 if gpu else 64}
        sizes = [1] if smoke else ([1, 4, 8] if gpu else [1, 4])
        out["sample"] = bench_sample(
            device,
            [REAL if gpu else TINY],
            sizes,
            label["image_size"],
            steps,
            1,  # one 50-step run per batch size is already an average over 50 UNet calls
            0 if smoke else 1,
            compile_model and not smoke,
            label,
        )
        _free(device)
    if "pose" in sections:
        started["pose"] = time.perf_counter()
        print(f"[{suite}] pose estimator (HigherHRNet-W48)", flush=True)
        out["pose"] = bench_pose(device, smoke)
        print("  " + row_text(out["pose"]), flush=True)
    if "graph" in sections:
        started["graph"] = time.perf_counter()
        print(f"[{suite}] graph layer (GCN vs gather EdgeConv)", flush=True)
        out["graph"] = bench_graph(device, smoke)
    if "data" in sections:
        started["data"] = time.perf_counter()
        print(f"[{suite}] data (one worker, 512 px)", flush=True)
        out["data"] = bench_data(smoke)
        print("  " + row_text(out["data"]), flush=True)
    if "speed" in sections and gpu and not smoke:
        started["speed"] = time.perf_counter()
        print(f"[{suite}] speed switches one by one (scripts/benchmark_speed.py)", flush=True)
        from benchmark_speed import main as speed_main

        out["speed"] = speed_main([])
    if "eval" in sections and "sample" in out:
        name = "SD1.5-size GRPose, bf16, this GPU" if gpu else "TINY model at 64 px on CPU (not the real model)"
        out["eval"] = eval_estimate(out["sample"], out.get("pose"), name)
    if gpu and not smoke:
        out["targets"] = check_targets(out)
    marks = [*started.items(), ("end", time.perf_counter())]
    out["section_wall_s"] = {name: marks[i + 1][1] - t for i, (name, t) in enumerate(marks[:-1])}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    start = time.perf_counter()
    for suite in suites:
        for section, value in run_suite(suite, sections, args.smoke, args.compile).items():
            result.setdefault(section, {})[suite] = value
    result["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_s"] = time.perf_counter() - start
    print_report(result)
    print(f"\ntotal wall time {result['wall_s']:.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
