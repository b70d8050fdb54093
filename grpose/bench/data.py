"""Data-loading benchmark: PoseDataset samples/s at 512 px on Human-Art-sized JPEGs (it must keep up with training).

    python -m grpose.bench.data                       # generates 8 textured ~1000x1500 JPEGs in a temp dir
    python -m grpose.bench.data --mapping M.json --base DIR --num_samples 200 --out bench.json

``benchmark_dataset`` is also the suite's ``data`` section (``data_section``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from grpose.bench.report import row_text
from grpose.bench.suites import Suite
from grpose.bench.timing import Stopwatch
from grpose.data.pose_dataset import PoseDataset, read_image
from grpose.data.synthetic import draw_synthetic_image

# Human-Art images are mostly 1-2 megapixels; these sizes (height, width) alternate portrait and landscape.
HUMANART_SIZES = ((1500, 1000), (1000, 1500), (1200, 1000), (1080, 1440))


def _natural_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Roughly 1/f multi-octave noise (float32, H x W x 3), so JPEG sizes and decode times resemble photos."""
    texture = np.zeros((height, width, 3), np.float32)
    for cell, amplitude in ((256, 30.0), (64, 20.0), (16, 14.0), (4, 10.0)):
        small = rng.normal(0, amplitude, (max(2, height // cell), max(2, width // cell), 3)).astype(np.float32)
        texture += cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    texture += rng.normal(0, 5.0, (height, width, 3)).astype(np.float32)
    return texture


def make_benchmark_images(out_dir: str | Path, num_images: int = 8, seed: int = 0, quality: int = 92) -> Path:
    """Write ``num_images`` Human-Art-sized textured JPEGs with drawn people and a mapping file; returns the mapping."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    mapping = {}
    for i in range(num_images):
        height, width = HUMANART_SIZES[i % len(HUMANART_SIZES)]
        image, people = draw_synthetic_image(rng, height, width)
        image = np.clip(image.astype(np.float32) + _natural_texture(rng, height, width), 0, 255).astype(np.uint8)
        img_rel, pose_rel = f"images/benchmark/{i:06d}.jpg", f"pose/benchmark/{i:06d}.npz"
        (out / img_rel).parent.mkdir(parents=True, exist_ok=True)
        (out / pose_rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / img_rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        np.savez(out / pose_rel, arr_0=np.array(people, dtype=object))
        mapping[f"benchmark_{i:06d}"] = {"img_path": img_rel, "prompt": "a person", "pose_path": pose_rel}
    mapping_file = out / "mapping_file_benchmark.json"
    mapping_file.write_text(json.dumps(mapping, indent=1))
    return mapping_file


def data_section(suite: Suite) -> dict[str, Any]:
    """PoseDataset samples/s in one worker (cv2 one thread) on generated Human-Art-sized JPEGs, printed as one row."""
    settings = suite.data
    with tempfile.TemporaryDirectory() as tmp:
        mapping = make_benchmark_images(tmp, settings.num_images)
        result = benchmark_dataset(
            mapping,
            tmp,
            image_size=settings.image_size,
            num_samples=settings.num_samples,
            warmup=settings.warmup,
        )
    print("  " + row_text(result), flush=True)
    return result


def benchmark_dataset(
    mapping: str | Path,
    base: str | Path | None = None,
    *,
    image_size: int = 512,
    num_samples: int = 64,
    train: bool = True,
    cv2_threads: int | None = 1,
    warmup: int = 2,
) -> dict[str, Any]:
    """Time ``PoseDataset.__getitem__`` sequentially (what one DataLoader worker does) and return the numbers.

    ``cv2_threads=1`` matches a DataLoader worker (the DataModule's worker init sets it); ``None`` keeps OpenCV's
    default. Also times the JPEG decode alone, to show how much of a sample it is.
    """
    previous_threads = cv2.getNumThreads()
    if cv2_threads is not None:
        cv2.setNumThreads(cv2_threads)
    try:
        ds = PoseDataset(mapping, base_dir=base, image_size=image_size, train=train, on_error="raise")
        for i in range(min(warmup, len(ds))):
            ds[i]
        times = []
        total = Stopwatch()
        for i in range(num_samples):
            watch = Stopwatch()
            ds[i % len(ds)]
            times.append(watch.elapsed())
        elapsed = total.elapsed()
        decode, shapes = [], set()
        for i in range(min(len(ds), num_samples)):
            watch = Stopwatch()
            image = read_image(ds.ids[i], ds.resolve(ds.entries[i]["img_path"]))
            decode.append(watch.elapsed())
            shapes.add(tuple(image.shape[:2]))
        file_kb = np.mean([ds.resolve(e["img_path"]).stat().st_size / 1024 for e in ds.entries[:num_samples]])
    finally:
        cv2.setNumThreads(previous_threads)
    ms = np.asarray(times) * 1000
    return {
        "samples_per_s": num_samples / elapsed,
        "ms_per_sample_mean": float(ms.mean()),
        "ms_per_sample_p50": float(np.percentile(ms, 50)),
        "ms_per_sample_p95": float(np.percentile(ms, 95)),
        "jpeg_decode_ms_mean": float(np.mean(decode) * 1000),
        "source_sizes_hw": sorted(list(s) for s in shapes),
        "source_file_kb_mean": float(file_kb),
        "num_samples": num_samples,
        "image_size": image_size,
        "train": train,
        "cv2_threads": cv2_threads if cv2_threads is not None else previous_threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "opencv": cv2.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints (and optionally writes) the benchmark results as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m grpose.bench.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mapping", default=None, help="mapping JSON to read (default: generate benchmark JPEGs)")
    parser.add_argument("--base", default=None, help="base directory of the mapping's paths")
    parser.add_argument("--num_images", type=int, default=8, help="generated images when no --mapping is given")
    parser.add_argument("--num_samples", type=int, default=64, help="samples to time")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1 = one DataLoader worker)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mapping = args.mapping or make_benchmark_images(tmp, args.num_images)
        results = benchmark_dataset(
            mapping, args.base, image_size=args.image_size, num_samples=args.num_samples, cv2_threads=args.threads
        )
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
