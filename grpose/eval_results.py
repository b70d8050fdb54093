"""Evaluation bookkeeping: deterministic shards, per-image seeds, append-only results that survive kills."""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def image_seed(global_seed: int, entry_id: str) -> int:
    """Seed of one generated image: a function of the global seed and the entry id only.

    So an image is the same whatever the number of processes, the batch it falls in, or a resume.
    """
    return (int(global_seed) * 1_000_003 + zlib.crc32(str(entry_id).encode())) % (2**63 - 1)


def shard_batches(ids: Sequence[str], batch_size: int, rank: int, world_size: int) -> list[list[str]]:
    """This rank's batches: the sorted ids cut into batches of ``batch_size``, every ``world_size``-th batch.

    Sharding whole batches keeps every image in the same batch (same companions, same shapes) whatever the
    number of processes, so results are bit-identical for 1 or N processes; the last batch may be partial.
    """
    ordered = sorted(ids)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches[rank::world_size]


def shard_path(results_dir: Path, rank: int) -> Path:
    return Path(results_dir) / f"results.rank{rank}.jsonl"


def append_results(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines, flushed and fsynced; each write is one ``write`` of whole lines.

    A kill can at worst leave a final partial line, which ``read_results`` drops (and ``repair`` truncates).
    """
    payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if not payload:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def read_results(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Read a results file; a torn last line (killed run) is dropped and, with ``repair``, cut off the file."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_end += len(line)
    if good_end != len(data):
        log.warning("%s: dropping %d bytes of a torn last record (interrupted run)", path, len(data) - good_end)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(good_end)
    return records


def merge_results(results_dir: Path, expected_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Merge every rank's shard; check each expected entry appears exactly once; return records sorted by id."""
    by_id: dict[str, dict[str, Any]] = {}
    duplicates = []
    for path in sorted(Path(results_dir).glob("results.rank*.jsonl")):
        for record in read_results(path):
            if record["id"] in by_id:
                duplicates.append(record["id"])
            by_id.setdefault(record["id"], record)
    expected = set(expected_ids)
    missing = sorted(expected - set(by_id))
    extra = sorted(set(by_id) - expected)
    if missing:
        raise RuntimeError(f"results are missing {len(missing)} entries, e.g. {missing[:5]}; rerun to complete them")
    if duplicates:
        log.warning("%d entries were generated twice (kept the first): %s", len(duplicates), duplicates[:5])
    if extra:
        log.warning("%d results are not in the current map file and are left out: %s", len(extra), extra[:5])
    return [by_id[i] for i in sorted(expected)]
