"""Benchmark the bottom-up pose estimator: network images/s (batched, flip test) and CPU grouping ms per image.

python -m grpose.bench.pose [--device cuda --arch higherhrnet_w48 --num_images 8 --batch_size 4 --out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from grpose.bench.report import row_text
from grpose.bench.suites import Suite
from grpose.bench.timing import Stopwatch, sync
from grpose.pose.estimator import ARCHS, BottomUpPoseEstimator
from grpose.pose.grouping import group_to_image, parse, people_to_results


def synthetic_maps(
    num_people: int, height: int, width: int, seed: int = 0, sigma: float = 2.0, missing: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """Realistic aggregated maps: a Gaussian per visible joint, small background noise, one tag per person.

    Returns heatmaps (17,H,W) and tags (17,H,W,2) as a trained model produces them (peaky heatmaps, tags constant
    around each person); ``missing`` of the joints get a weak peak below the detection threshold, so refine works.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    hm = rng.normal(0, 0.003, (17, height, width)).astype(np.float32)
    tag = np.zeros((17, height, width), np.float32)
    nearest = np.full((17, height, width), np.inf, np.float32)
    person_tags = rng.permutation(num_people).astype(np.float32) * 1.5 + rng.normal(0, 0.1, num_people)
    box = max(8, int(min(height, width) / max(2, np.sqrt(num_people))))
    for p in range(num_people):
        cx, cy = rng.uniform(0, width - box), rng.uniform(0, height - box)
        for k in range(17):
            x, y = cx + rng.uniform(0, box), cy + rng.uniform(0, box)
            peak = rng.uniform(0.02, 0.08) if rng.random() < missing else rng.uniform(0.3, 1.0)
            d2 = (xx - x) ** 2 + (yy - y) ** 2
            hm[k] = np.maximum(hm[k], peak * np.exp(-d2 / (2 * sigma**2)))
            closer = d2 < nearest[k]
            tag[k][closer] = person_tags[p]
            nearest[k] = np.minimum(nearest[k], d2)
    tag = tag + rng.normal(0, 0.05, tag.shape).astype(np.float32)
    tags = np.stack([tag, tag + rng.normal(0, 0.05, tag.shape).astype(np.float32)], axis=-1)
    return torch.from_numpy(hm), torch.from_numpy(tags)


def pose_section(suite: Suite) -> dict:
    """The suite's pose-estimator numbers (random weights), printed as one row."""
    settings = suite.pose
    result = benchmark_pose_estimator(
        suite.device,
        settings.num_images,
        arch=settings.arch,
        batch_size=settings.batch_size,
        input_size=settings.input_size,
        num_people=settings.num_people,
        warmup=settings.warmup,
    )
    print("  " + row_text(result), flush=True)
    return result


def benchmark_pose_estimator(
    device: str = "cpu",
    num_images: int = 8,
    *,
    arch: str = "higherhrnet_w48",
    batch_size: int = 4,
    input_size: int = 512,
    num_people: int = 30,
    checkpoint: str | None = None,
    threads: int | None = None,
    warmup: int = 1,
) -> dict:
    """Time the estimator's two halves separately and return a dict of the numbers.

    network: preprocessing + forward + flipped forward + aggregation, batched on ``device`` (random weights unless
    ``checkpoint``); grouping: the CPU parser + back-projection + pose NMS on realistic synthetic maps of
    ``num_people`` people (random-weight maps are not representative), one image at a time, at the map size the
    model produces for ``input_size`` (HigherHRNet: half the input, MobileNetV2: the input).
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    est = BottomUpPoseEstimator(
        arch, checkpoint, allow_random_init=checkpoint is None, device=dev, input_size=input_size
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (input_size, input_size, 3), dtype=np.uint8) for _ in range(batch_size)]
    for _ in range(warmup):
        x, metas = est.preprocess(images)
        est.network(x, metas[0].base_size)
    sync(dev)
    done, watch = 0, Stopwatch(dev)
    while done < num_images:
        x, metas = est.preprocess(images)
        out = est.network(x, metas[0].base_size)
        out["heatmaps"].cpu(), out["tags"].cpu()
        done += batch_size
    net_s = watch.elapsed() / done

    spec = ARCHS[arch]
    map_size = input_size if spec.project2image else input_size // 2
    meta = metas[0]
    times, people = [], []
    for i in range(num_images):
        hm, tags = synthetic_maps(num_people, map_size, map_size, seed=i)
        watch = Stopwatch()
        grouped, scores = parse(
            hm, tags, est.params, adjust=est.adjust, refine=est.refine, use_udp=est.use_udp, solver=est.solver
        )
        grouped = group_to_image(
            grouped, center=meta.center, scale=meta.scale, heatmap_size=(map_size, map_size), use_udp=est.use_udp
        )
        res = people_to_results(grouped, scores, est.pose_nms_threshold)
        times.append(watch.elapsed())
        people.append(len(res["scores"]))
    group_ms = 1000 * float(np.mean(times))
    return {
        "arch": arch,
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "torch_threads": torch.get_num_threads(),
        "input_size": input_size,
        "batch_size": batch_size,
        "num_images": done,
        "network_s_per_image": net_s,
        "network_images_per_s": 1.0 / net_s,
        "grouping_map_size": map_size,
        "grouping_people_per_image": float(np.mean(people)),
        "grouping_ms_per_image": group_ms,
        "grouping_ms_max": 1000 * float(np.max(times)),
        "end_to_end_images_per_s": 1.0 / (net_s + group_ms / 1000),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m grpose.bench.pose", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="higherhrnet_w48", choices=sorted(ARCHS))
    ap.add_argument("--num_images", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--input_size", type=int, default=512)
    ap.add_argument("--num_people", type=int, default=30)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (grouping itself is single-thread)")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads or os.cpu_count()))
    res = benchmark_pose_estimator(
        args.device,
        args.num_images,
        arch=args.arch,
        batch_size=args.batch_size,
        input_size=args.input_size,
        num_people=args.num_people,
        checkpoint=args.checkpoint,
        threads=args.threads,
    )
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
