"""Benchmark output: the performance targets of the README (met or not) and plain-text tables of the JSON rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SECTIONS = ("train", "sample", "pose", "graph", "data", "eval")
REPORTS = (*SECTIONS, "targets", "section_wall_s")


def check_targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #7 targets at batch 6, 512 px, bf16: training MFU >= 40 % and peak < 40 GB (no pose loss); >= 1 img/s."""
    rows = []
    for row in out.get("train", []):
        if row["batch"] == 6 and not row["pose_loss"]:
            mfu, peak = row.get("mfu"), row.get("peak_memory_gib")
            rows.append(
                {
                    "target": f"train b6 ckpt={row['checkpointing']}: MFU >= 0.40, peak < 40 GB",
                    "measured": f"MFU {fmt(mfu)}, peak {fmt(peak)} GiB",
                    "met": mfu is not None and peak is not None and mfu >= 0.40 and peak * 2**30 < 40e9,
                }
            )
    rates = [r for r in out.get("sample", []) if "images_per_s" in r]
    for row in rates:
        rows.append(
            {
                "target": f"DDIM-50 + CFG b{row['batch']} {row['variant']}: >= 1 image/s",
                "measured": f"{row['images_per_s']:.3g} images/s",
                "met": row["images_per_s"] >= 1.0,
            }
        )
    return rows


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, big integers in e-notation."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10**6:
        return f"{value:.3e}"
    return str(value)


def row_text(row: dict[str, Any]) -> str:
    """One row as ``key=value`` pairs (scalars only), for the progress lines."""
    return " ".join(f"{k}={fmt(v)}" for k, v in row.items() if not isinstance(v, list | dict))


def format_table(rows: list[dict[str, Any]], skip: Sequence[str] = ("times_s",)) -> str:
    """A plain-text table of dict rows (the union of keys, scalars only)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and k not in skip and not isinstance(v, list | dict)]
    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def print_report(result: dict[str, Any]) -> None:
    """The machine, then one table per section and suite."""
    print("\n== machine")
    print(format_table([result["machine"]]))
    for section in REPORTS:
        for suite, value in result.get(section, {}).items():
            print(f"\n== {section} [{suite}]")
            print(format_table(value if isinstance(value, list) else [value]))
