"""Scan a pose-dataset mapping file: missing/corrupt images, missing/malformed pose files, empty prompts, people.

    python scripts/check_dataset.py MAPPING_JSON --base DIR

Prints one line per bad entry and a summary; exit status 0 when every entry is clean, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grpose.data.pose_dataset import DatasetEntryError, load_mapping, read_entry_fields, read_pose  # noqa: E402


def check_image(path: Path) -> tuple[str, str] | None:
    """(kind, description) of an image file's problem, or None when it decodes completely."""
    if not path.is_file():
        return "missing image", str(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        return "corrupt image", f"empty file {path}"
    if cv2.imdecode(data, cv2.IMREAD_COLOR) is None:  # also rejects truncated JPEGs, like PoseDataset
        return "corrupt image", f"cannot decode (corrupt or truncated) {path}"
    return None


def check_entry(
    entry_id: str, entry: object, base: Path, keypoint_num: int = 17
) -> tuple[list[tuple[str, str]], int | None]:
    """(kind, description) problems of one mapping entry and its number of people (None if the pose is unusable)."""
    try:
        img_path, prompt, pose_path = read_entry_fields(entry_id, entry)
    except DatasetEntryError as err:
        return [("bad mapping entry", str(err))], None
    problems = []
    image_problem = check_image(base / img_path)
    if image_problem:
        problems.append(image_problem)
    people = None
    pose_file = base / pose_path
    if not pose_file.is_file():
        problems.append(("missing pose file", str(pose_file)))
    else:
        try:
            people = len(read_pose(entry_id, pose_file, keypoint_num))
        except DatasetEntryError as err:
            problems.append(("malformed pose file", str(err)))
    if not prompt.strip():
        problems.append(("empty prompt", repr(prompt)))
    return problems, people


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mapping", help="mapping JSON {id: {img_path, prompt, pose_path}}")
    parser.add_argument(
        "--base", default=None, help="directory the mapping's paths are relative to (default: its folder)"
    )
    parser.add_argument("--keypoint_num", type=int, default=17, help="keypoints per person (COCO: 17)")
    parser.add_argument("--max_person_num", type=int, default=10, help="people kept by the dataset (for the summary)")
    args = parser.parse_args(argv)
    base = Path(args.base) if args.base else Path(args.mapping).parent
    try:
        mapping = load_mapping(args.mapping)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 1
    bad: dict[str, list[tuple[str, str]]] = {}
    people_counts: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    for entry_id, entry in mapping.items():
        problems, people = check_entry(str(entry_id), entry, base, args.keypoint_num)
        if people is not None:
            people_counts[people] += 1
        if problems:
            bad[str(entry_id)] = problems
            kinds.update(kind for kind, _ in problems)
            print(f"BAD {entry_id}: " + "; ".join(f"{kind}: {detail}" for kind, detail in problems))
    total = len(mapping)
    print(f"\n{total} entries, {total - len(bad)} clean, {len(bad)} with problems ({args.mapping}, base {base})")
    for kind, count in sorted(kinds.items()):
        print(f"  {count:6d}  {kind}")
    if people_counts:
        histogram = ", ".join(f"{n}: {c}" for n, c in sorted(people_counts.items()))
        over = sum(c for n, c in people_counts.items() if n > args.max_person_num)
        empty = people_counts.get(0, 0)
        print(f"people per image (count: images): {histogram}")
        print(
            f"  {sum(n * c for n, c in people_counts.items())} people; {empty} images without people; "
            f"{over} images with more than {args.max_person_num} (extra people are dropped)"
        )
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
