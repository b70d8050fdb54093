"""``python -m grpose.bench``: the benchmark suites (see grpose/bench/runner.py)."""

from grpose.bench.runner import main

if __name__ == "__main__":
    main()
