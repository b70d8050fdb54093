"""``python -m grpose.bench.speed``: the speed switches one by one (see grpose/bench/speed/__init__.py)."""

from grpose.bench.speed.cli import main

if __name__ == "__main__":
    main()
