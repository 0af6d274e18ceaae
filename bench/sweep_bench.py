"""Sweep costs, as ratios and differences measured in the same run.

- per-job overhead of the basic launcher beyond the training itself: a 16-job sweep
  and a 1-job sweep of the same tiny job; (wall-clock difference - difference of the
  jobs' own `seconds`) / 15 is what Hydra and deeprun add per job (config composition,
  job directory, .hydra/ files, results.csv row);
- Hydra's own floor, measured the same way on an app with no config that returns at
  once (`bench/floor_app.py`): what any Hydra 1.3 app pays per job with the basic
  launcher, which deeprun cannot go below;
- speed-up of hydra/launcher=joblib (2 workers) over the basic launcher on a 16-job grid of
  the deep-MLP notebook's model D (1000 full-batch epochs each).

Each measurement is a fresh `deeprun -m` process, as a user runs it; medians of repeats,
the two launchers alternating. The basic launcher is named (`hydra/launcher=basic`): the
default of `deeprun -m` is now the batched launcher, which stack_bench.py measures.

    python bench/sweep_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

DEEPRUN = Path(sys.executable).with_name("deeprun")
FLOOR_APP = Path(__file__).with_name("floor_app.py")
TINY = ["epochs=20", "depth=2", "width=8", "data.n=64"]
MODEL_D = ["depth=8", "width=8", "init=uniform", "optimizer=sgd", "lr=0.01", "epochs=1000", "data.n=400"]
SEEDS16 = "seed=" + ",".join(map(str, range(16)))
BASIC = "hydra/launcher=basic"  # named: the default launcher of `deeprun -m` is now batched (stack_bench.py)


def sweep(args: list[str]) -> tuple[float, pd.DataFrame]:
    """Wall-clock seconds of `deeprun -m ARGS` and its results table."""
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        subprocess.run([str(DEEPRUN), "-m", *args, "hydra.sweep.dir=S"], cwd=d, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        results = pd.read_csv(Path(d) / "S" / "results.csv")
    assert (results.status == "completed").all(), results.status
    return wall, results


def floor(args: list[str]) -> float:
    """Wall-clock seconds of the no-op Hydra app's `-m ARGS`."""
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(FLOOR_APP), "-m", *args, "hydra/job_logging=disabled",
                        "hydra.sweep.dir=S"], cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def overhead(repeats: int) -> tuple[float, float]:
    """(deeprun's, the no-op Hydra app's) seconds per job beyond the jobs' own work."""
    ours, hydras = [], []
    for _ in range(repeats):
        t1, r1 = sweep([*TINY, "seed=0", BASIC])
        t16, r16 = sweep([*TINY, SEEDS16, BASIC])
        ours.append(((t16 - t1) - (r16.seconds.sum() - r1.seconds.sum())) / 15)
        hydras.append((floor(["+seed=" + ",".join(map(str, range(16)))]) - floor(["+seed=0"])) / 15)
    return statistics.median(ours), statistics.median(hydras)


def joblib_speedup(repeats: int) -> tuple[float, float, float]:
    ratios, basics, joblibs = [], [], []
    for _ in range(repeats):
        basic, _ = sweep([*MODEL_D, SEEDS16, BASIC])
        joblib, _ = sweep([*MODEL_D, SEEDS16, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
        ratios.append(basic / joblib)
        basics.append(basic)
        joblibs.append(joblib)
    return statistics.median(ratios), statistics.median(basics), statistics.median(joblibs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}; medians of {args.repeats} repeats")
    ours, hydra = overhead(args.repeats)
    print(f"basic launcher, per-job overhead beyond training: deeprun {ours * 1000:.0f} ms; "
          f"a no-op Hydra app {hydra * 1000:.0f} ms", flush=True)
    ratio, basic, joblib = joblib_speedup(args.repeats)
    print(f"16 jobs of model D: joblib (2 workers) {ratio:.2f}x faster than basic "
          f"(median {basic:.1f} s vs {joblib:.1f} s)")


if __name__ == "__main__":
    main()
