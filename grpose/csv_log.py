"""``logs/metrics.csv`` that survives a resume: the rows of the interrupted run up to its checkpoint are kept.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty, so a run resumed after a crash lost
every row logged before the crash. Here a checkpoint records how many rows the file held when it was written
(``CSVRowsAtSave``, after flushing the logger), and a resumed run keeps exactly what the checkpoint covers:

- the first ``rows`` rows (written before the save, including callbacks' rows at the checkpoint's step, such as
  ``val_pose/*``), and
- later rows of a step before the checkpoint's ``global_step`` N: Lightning logs the training metrics of the
  step that was saved (logged as step N - 1) just after the save, and the resumed run does not redo that step.

Rows of step N or later written after the save are dropped: the resumed run logs them again.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

ROWS_KEY = "csv_log_rows"


class ResumableCSVLogger(CSVLogger):
    """A ``CSVLogger`` that, given ``resume_from`` (the checkpoint's ``csv_log_rows`` and ``global_step``), keeps
    the earlier run's rows instead of deleting them (module docstring)."""

    def __init__(self, *args: Any, resume_from: tuple[int, int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_from = resume_from

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir, resume_from=self.resume_from)
        return self._experiment


class _KeepingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_from: tuple[int, int] | None) -> None:
        self.resume_from = resume_from
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        """Called by the writer's constructor; Lightning's version deletes the file."""
        path = Path(self.metrics_file_path)
        if self.resume_from is None or not path.is_file():
            super()._check_log_dir_exists()
            return
        rows_at_save, global_step = self.resume_from
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        kept = rows[:rows_at_save] + [r for r in rows[rows_at_save:] if _step(r) < global_step]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = header  # new columns are added to this header, old ones stay


def _step(row: dict[str, str]) -> float:
    return float(row.get("step") or "inf")


class CSVRowsAtSave(pl.Callback):
    """Flushes the CSV logger and stores its row count in each checkpoint (``checkpoint["csv_log_rows"]``)."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger) and trainer.is_global_zero:
                logger.save()
                path = Path(logger.experiment.metrics_file_path)
                with open(path, newline="") if path.is_file() else open(os.devnull) as fh:
                    checkpoint[ROWS_KEY] = sum(1 for _ in csv.DictReader(fh))


def resume_point(checkpoint: dict) -> tuple[int, int] | None:
    """(rows, global_step) of a checkpoint written with ``CSVRowsAtSave``; None for older checkpoints."""
    if ROWS_KEY not in checkpoint:
        return None
    return int(checkpoint[ROWS_KEY]), int(checkpoint.get("global_step", 0))
