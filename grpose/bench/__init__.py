"""Benchmarks: ``python -m grpose.bench`` (the suites, runner.py) and ``python -m grpose.bench.speed`` (speed switches).

timing.py holds the one sync/timer/peak-memory helper every benchmark uses; suites.py the settings of each suite.
"""
