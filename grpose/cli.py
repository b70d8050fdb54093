"""What every command-line entry point sets up: one log line per message, no warnings that only confuse users."""

from __future__ import annotations

import logging
import warnings


def configure_logging(fmt: str = "%(levelname)s %(name)s: %(message)s", level: int = logging.INFO) -> None:
    """Log through the root logger only, and hide Lightning's notice about modules in eval mode.

    Lightning gives its ``lightning.*`` loggers their own console handler; with a root handler too, every Lightning
    message printed twice. The eval-mode notice concerns the frozen SD1.5 parts, which are in eval mode on purpose
    (``GRPoseModel._freeze``).
    """
    import lightning.pytorch  # noqa: F401  (importing it attaches the handlers removed below)

    logging.basicConfig(level=level, format=fmt)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
