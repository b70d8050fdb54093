"""Where does a training step (and a sampling step) spend its time? torch.profiler tables for one step.

    python scripts/profile_step.py --device cuda --batch 6            # real SD1.5-size model, random weights
    python scripts/profile_step.py --device cpu --config configs/grpose/tiny.yaml --image_size 64

Prints the wall time per step next to the summed device-kernel time (a step whose kernels take much less than
its wall time is bound by the CPU/launches, not the GPU), then the most expensive operators.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grpose.bench.model import autocast, build_model, synthetic_batch  # noqa: E402
from grpose.bench.timing import sync, timed  # noqa: E402


def profile(fn, device: torch.device, label: str, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    times = timed(fn, device, repeats=3, warmup=0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.key_averages()
    wall = statistics.median(times)
    print(f"\n== {label}: wall {wall * 1e3:.1f} ms per call (median of 3)")
    if device.type == "cuda":
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
        print(f"   device kernels: {kernel_us / 1e3:.1f} ms ({100 * kernel_us / 1e6 / wall:.0f}% of wall)")
        print(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=[str(ROOT / "configs/grpose/humanart.yaml")])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--image_size", type=int, default=512)
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--no_checkpoint", action="store_true", help="turn activation checkpointing off")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    overrides = list(args.overrides)
    if args.no_checkpoint:
        overrides += [
            "model.params.unet.params.use_checkpoint=false",
            "model.params.adapter.params.use_checkpoint=false",
        ]
    model = build_model([Path(c) for c in args.config], overrides, device)
    model.train()
    optimizer = model.configure_optimizers()
    batch = synthetic_batch(args.batch, args.image_size, device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = sum(model.compute_losses(batch).values()).mean()
        loss.backward()
        optimizer.step()

    profile(train_step, device, f"training step, batch {args.batch}", rows=args.rows)

    model.eval()
    hint = batch["hint"].permute(0, 3, 1, 2)
    size = args.image_size // 8
    with torch.no_grad():
        context = model.encode_text(batch["txt"] * 2)  # cond + uncond in one batch, as the sampler runs it
        x = torch.randn(2 * args.batch, 4, size, size, device=device)
        t = torch.full((2 * args.batch,), 500, device=device, dtype=torch.long)

        def denoise() -> None:
            with torch.no_grad(), autocast(device):
                model.apply_model(x, t, context, hint.repeat(2, 1, 1, 1))

        profile(denoise, device, f"one sampling step (CFG), batch {args.batch}", rows=args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
