"""The lab's targets (docs/lab.md §8): each one's measured value, its threshold and whether it is met.

The numbers come from the three places that measure them: the estimator's ceiling (``grpose.lab.ceiling``), the
main job's ``final_evaluation.json`` with its wall time, and the study folder's ``timing.json``
(``scripts/lab_study.py``). ``scripts/lab_targets.py`` gathers them; this module only judges.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CEILING_MIN = 0.80  # estimator AP on held-out real lab images
CEILING_SHARE = 0.5  # main job's AP / ceiling
BASE_FACTOR = 10.0  # main job's AP / base-only AP
MAIN_JOB_MAX_S = 5 * 60.0  # the README's first command, dataset creation included
STUDY_MAX_S = 60 * 60.0  # the default lab study


@dataclass(frozen=True)
class Target:
    """One line of the report: ``met`` is None when the value was not measured."""

    name: str
    value: float | None
    threshold: float | None
    met: bool | None
    detail: str


def read_final_evaluation(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """The ``trained`` and ``base only`` rows a lab run wrote to ``run_dir/final_evaluation.json``."""
    path = Path(run_dir) / "final_evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no final evaluation; run the main job (python train.py --config configs/lab/grpose.yaml) "
            "or name its run folder"
        )
    rows = json.loads(path.read_text())
    missing = [key for key in ("trained", "base only") if key not in rows or "ap" not in rows[key]]
    if missing:
        raise ValueError(f"{path}: rows {missing} with an 'ap' are missing; is this a lab run's final evaluation?")
    return rows


def default_study_seconds(study_dir: str | Path) -> tuple[float | None, str]:
    """Wall time of the last complete default study recorded in ``study_dir/timing.json``, and where it came from.

    A complete default study is an invocation of ``scripts/lab_study.py`` without options that started from an
    empty folder (``default_study`` and ``fresh`` in its record); resumed or partial invocations do not count.
    """
    path = Path(study_dir) / "timing.json"
    if not path.is_file():
        return None, f"{path} does not exist (studies record their wall time there since 2026-12-08)"
    complete = [r for r in json.loads(path.read_text()) if r.get("default_study") and r.get("fresh")]
    if not complete:
        return None, f"{path} records no complete default study"
    last = complete[-1]
    return float(last["wall_s"]), f"{path}: {last.get('finished', '?')} on {last.get('machine', '?')}"


def judge(
    ceiling_ap: float | None,
    main_job: dict[str, dict[str, float]] | None,
    main_job_s: float | None,
    study_s: float | None,
    study_detail: str = "",
) -> list[Target]:
    """The five targets of the lab issue from the measured values (None: not measured)."""
    targets = [
        Target(
            "estimator ceiling (AP, held-out real images)",
            ceiling_ap,
            CEILING_MIN,
            None if ceiling_ap is None else ceiling_ap >= CEILING_MIN,
            "the most any lab result can reach",
        )
    ]
    trained = None if main_job is None else main_job["trained"]["ap"]
    base = None if main_job is None else main_job["base only"]["ap"]
    share = None if trained is None or not ceiling_ap else trained / ceiling_ap
    targets.append(
        Target(
            "main job AP / ceiling",
            share,
            CEILING_SHARE,
            None if share is None else share >= CEILING_SHARE,
            "" if trained is None else f"AP {trained:.4f}; half the ceiling is {CEILING_SHARE * (ceiling_ap or 0):.4f}",
        )
    )
    if trained is None:
        targets.append(Target("main job AP / base-only AP", None, BASE_FACTOR, None, "main job not evaluated"))
    elif base > 0:
        ratio = trained / base
        targets.append(
            Target(
                "main job AP / base-only AP",
                ratio,
                BASE_FACTOR,
                ratio >= BASE_FACTOR,
                f"AP {trained:.4f} against {base:.4f} for the base alone",
            )
        )
    else:  # any AP is infinitely many times 0: met only in that degenerate sense
        targets.append(
            Target(
                "main job AP / base-only AP",
                None,
                BASE_FACTOR,
                trained > 0,
                f"the base alone scores AP 0 on these images; the trained adapter {trained:.4f}",
            )
        )
    targets.append(
        Target(
            "main job wall time (s, dataset creation included)",
            main_job_s,
            MAIN_JOB_MAX_S,
            None if main_job_s is None else main_job_s <= MAIN_JOB_MAX_S,
            "" if main_job_s is not None else "not timed here (an existing run folder was read)",
        )
    )
    targets.append(
        Target(
            "default study wall time (s)",
            study_s,
            STUDY_MAX_S,
            None if study_s is None else study_s <= STUDY_MAX_S,
            study_detail,
        )
    )
    return targets


def format_report(targets: list[Target]) -> str:
    """A markdown table: target, value, threshold, met / not met / not measured, detail."""
    lines = ["| target | value | threshold | status | detail |", "|---|---|---|---|---|"]
    for t in targets:
        value = "-" if t.value is None else f"{t.value:.4g}"
        status = {True: "met", False: "**not met**", None: "not measured"}[t.met]
        lines.append(f"| {t.name} | {value} | {t.threshold:.4g} | {status} | {t.detail} |")
    return "\n".join(lines) + "\n"


def as_json(targets: list[Target], extra: dict[str, Any]) -> str:
    """The report as JSON: every target and the measurements it came from."""
    return json.dumps({"targets": [asdict(t) for t in targets], **extra}, indent=1)
