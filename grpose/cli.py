"""What every command-line entry point sets up: one log line per message, no warnings that only confuse users."""

from __future__ import annotations

import logging
import warnings


def configure_logging(fmt: str = "%(levelname)s %(name)s: %(message)s", level: int = logging.INFO) -> None:
    """Log through the root logger only, and hide Lightning's notices that do not concern our runs.

    Lightning gives its ``lightning.*`` loggers their own console handler; with a root handler too, every Lightning
    message printed twice. Hidden: the eval-mode notice (the frozen SD1.5 parts are in eval mode on purpose,
    ``GRPoseModel._freeze``); "val_dataloader but no validation_step" (validation here is a callback,
    ``grpose/pose_validation.py``, that reads the datamodule's validation set itself); Lightning's own deprecation
    of torch's ``LeafSpec``; and its advertising "Tip" for a cloud logger.
    """
    import lightning.pytorch  # noqa: F401  (importing it attaches the handlers removed below)

    logging.basicConfig(level=level, format=fmt)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_tips)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*val_dataloader.* but have no `validation_step`.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def _drop_tips(record: logging.LogRecord) -> bool:
    return "Tip:" not in record.getMessage()
