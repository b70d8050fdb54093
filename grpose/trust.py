"""The opt-in to unpickle checkpoint files without restriction: ``--trust_checkpoint`` / ``GRPOSE_TRUST_CHECKPOINTS=1``.

Kept free of torch imports so that CLIs can parse their arguments before loading torch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: Environment variable that trusts every checkpoint file (``1``/``true``/``yes``); ``--trust_checkpoint`` sets it.
TRUST_ENV = "GRPOSE_TRUST_CHECKPOINTS"
TRUST_HINT = (
    f"If you trust this file, pass --trust_checkpoint or set {TRUST_ENV}=1 (a pickle can run arbitrary code: "
    "only do this for files from a source you trust)."
)


def trust_checkpoints(trust: bool | None = None) -> bool:
    """Whether files may be unpickled without restriction: ``trust`` if given, else the ``TRUST_ENV`` variable."""
    if trust is not None:
        return bool(trust)
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def trusting_checkpoints(enabled: bool) -> Iterator[None]:
    """Within the block (and in processes started from it) trust every checkpoint file if ``enabled``."""
    if not enabled:
        yield
        return
    previous = os.environ.get(TRUST_ENV)
    os.environ[TRUST_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = previous


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--trust_checkpoint`` flag of every CLI that reads weight files (see ``honours_trust_flag``)."""
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help=f"unpickle weight files without restriction (runs any code they contain; same as {TRUST_ENV}=1). "
        "Without it, files that need more than tensors and plain containers are refused",
    )


def honours_trust_flag(main: Callable[..., Any]) -> Callable[..., Any]:
    """Run a CLI ``main(argv)`` inside ``trusting_checkpoints(--trust_checkpoint)``, so that every file it reads
    (including those named in configs, and in worker processes it starts) honours the flag."""

    @functools.wraps(main)
    def wrapper(argv: Iterable[str] | None = None, *args: Any, **kwargs: Any) -> Any:
        probe = argparse.ArgumentParser(add_help=False)
        probe.add_argument("--trust_checkpoint", action="store_true")
        known, _ = probe.parse_known_args(list(sys.argv[1:] if argv is None else argv))
        with trusting_checkpoints(known.trust_checkpoint):
            return main(argv, *args, **kwargs)

    return wrapper
