"""The lab's targets report (grpose/lab/targets.py, scripts/lab_targets.py): each target judged from its numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from grpose.lab.targets import default_study_seconds, format_report, judge, read_final_evaluation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def _rows(trained: float, base: float) -> dict:
    return {"trained": {"ap": trained, "ap50": 0.0}, "base only": {"ap": base, "ap50": 0.0}}


def _status(targets) -> dict[str, bool | None]:
    return {t.name.split(" (")[0]: t.met for t in targets}


def test_each_target_is_met_exactly_at_its_threshold():
    met = judge(0.80, _rows(0.40, 0.04), 300.0, 3600.0)
    assert all(t.met for t in met), met
    missed = judge(0.79, _rows(0.39, 0.0391), 300.5, 3600.5)
    assert not any(t.met for t in missed), missed
    share = next(t for t in missed if t.name == "main job AP / ceiling")
    assert share.value == pytest.approx(0.39 / 0.79)


def test_a_base_at_ap_zero_meets_the_ratio_only_in_the_degenerate_sense_and_says_so():
    (ratio,) = [t for t in judge(0.5, _rows(0.01, 0.0), None, None) if t.name == "main job AP / base-only AP"]
    assert ratio.met is True and ratio.value is None and "scores AP 0" in ratio.detail
    (ratio,) = [t for t in judge(0.5, _rows(0.0, 0.0), None, None) if t.name == "main job AP / base-only AP"]
    assert ratio.met is False


def test_unmeasured_values_are_reported_as_not_measured_not_as_missed():
    targets = judge(None, None, None, None, "no record")
    assert set(_status(targets).values()) == {None}
    report = format_report(targets)
    assert report.count("not measured") == 5 and "no record" in report


def test_final_evaluation_missing_or_foreign_file_names_the_file_and_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)final_evaluation\.json.*configs/lab/grpose\.yaml"):
        read_final_evaluation(tmp_path)
    (tmp_path / "final_evaluation.json").write_text(json.dumps({"trained": {"ap": 0.1}}))
    with pytest.raises(ValueError, match=r"base only"):
        read_final_evaluation(tmp_path)


def test_study_time_comes_from_the_last_complete_default_study_only(tmp_path):
    assert default_study_seconds(tmp_path)[0] is None
    records = [
        {"wall_s": 100.0, "default_study": True, "fresh": True, "finished": "a", "machine": "m"},
        {"wall_s": 5.0, "default_study": True, "fresh": False},  # resumed: did not run every row
        {"wall_s": 7.0, "default_study": False, "fresh": True},  # another budget
    ]
    (tmp_path / "timing.json").write_text(json.dumps(records))
    seconds, detail = default_study_seconds(tmp_path)
    assert seconds == 100.0 and "a on m" in detail
    (tmp_path / "timing.json").write_text(json.dumps(records[1:]))
    assert default_study_seconds(tmp_path)[0] is None


def test_cli_reports_a_finished_run_with_a_given_ceiling(tmp_path, capsys):
    import lab_targets

    run = tmp_path / "run"
    run.mkdir()
    (run / "final_evaluation.json").write_text(json.dumps(_rows(0.25, 0.01)))
    out = tmp_path / "targets.json"
    argv = ["--main_job_run", str(run), "--ceiling", "0.45", "--study", str(tmp_path), "--out", str(out)]
    assert lab_targets.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| main job AP / ceiling | 0.5556 | 0.5 | met |" in printed
    report = json.loads(out.read_text())
    assert [t["met"] for t in report["targets"]] == [False, True, True, None, None]
    assert report["main_job"]["trained"]["ap"] == 0.25
