"""Issue #12 targets, met or not, from the rows of the speed comparison."""

from __future__ import annotations

from typing import Any

from grpose.bench.speed.settings import DEFAULT_TRAIN_VARIANT


def speed_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Default-config training step at batch 6, its peak memory, sampling images/s and Human-Art eval time."""
    out = []
    train = {r["variant"]: r for r in result.get("train", []) if "step_s" in r}
    default = train.get(DEFAULT_TRAIN_VARIANT)
    if default:
        out.append(
            {
                "target": "training step b6, default config (configs/grpose/humanart.yaml) <= 0.13 s",
                "measured": f"{default['step_s']:.3f} s, MFU {default.get('mfu') or 0:.3f}",
                "met": default["step_s"] <= 0.13,
            }
        )
        out.append(
            {
                "target": "peak memory b6 without pose loss < 40 GB",
                "measured": f"{default['peak_memory_gib']:.1f} GiB",
                "met": default["peak_memory_gib"] * 2**30 < 40e9,
            }
        )
    rates = [r for r in result.get("sample", []) if "images_per_s" in r]
    if rates:
        best = max(rates, key=lambda r: r["images_per_s"])
        out.append(
            {
                "target": "DDIM-50 + CFG b8 >= 3 images/s",
                "measured": f"{best['images_per_s']:.2f} images/s ({best['variant']})",
                "met": best["images_per_s"] >= 3,
            }
        )
        out.append(
            {
                "target": "Human-Art eval sampling (4750 images) < 35 min",
                "measured": f"{best['eval_min']:.1f} min of sampling (pose detection not included)",
                "met": best["eval_min"] < 35,
            }
        )
    return out
