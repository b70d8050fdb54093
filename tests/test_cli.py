"""The command line speaks to people: a user error is one clear line and a non-zero exit, each log line once."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from grpose.cli import configure_logging  # noqa: E402
from grpose.config import split_overrides  # noqa: E402

TINY = str(ROOT / "configs/grpose/tiny.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.params.batch_size=abc",
            r"^data: building grpose\.data\.datamodule\.PoseDataModule failed: invalid literal",
        ),
        ("model.params.bogus=1", r"^model\.params: unknown parameter\(s\) \['bogus'\]"),
    ],
)
def test_bad_override_is_one_line_naming_the_key(tmp_path, override, message):
    with pytest.raises(SystemExit, match=message) as info:
        train.main(["--config", TINY, override, "--outdir", str(tmp_path), "synthetic_data=null"])
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^config file not found: .*nope\.yaml \(pass an existing YAML file"):
        train.main(["--config", str(tmp_path / "nope.yaml")])


def test_overrides_after_the_config_list_are_overrides():
    assert split_overrides(["a.yaml", "x.y=1", "b.yaml"], ["z=2"]) == (["a.yaml", "b.yaml"], ["x.y=1", "z=2"])


def test_lightning_messages_go_through_the_root_logger_once():
    configure_logging()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        assert not logger.handlers and logger.propagate
