"""The ML Mule learning benchmark: every method on the world's two tasks and on digits.

A thin entry point for `make bench` (which runs every `bench/bench_*.py`); the benchmark itself
is the `mlmule_bench` package beside this file. Arguments are the package's, e.g.

    python bench/bench_learning.py --config tiny --seed 0 --methods local,mlmule --out /tmp/x.json
    python bench/bench_learning.py flower --config flower
    python bench/bench_learning.py scaling --homes 20,100,500 --days 10

Writes bench/results/learning.json, learning_runs.json and the learning_*.png figures; see
bench/results/README.md for what they show.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlmule_bench.__main__ import main

if __name__ == "__main__":
    # `make bench` passes nothing: the full benchmark, two (task, seed) pairs at a time
    raise SystemExit(main(sys.argv[1:] or ["run", "--jobs", "2"]))
