"""What logging costs: the deep-MLP notebook's model D trained by api.run with logger=none, tensorboard
and mlflow.

Model D (depth=8 width=8 init=uniform optimizer=sgd lr=0.01 epochs=1000 data.n=400 act=sigmoid,
full batch) probed every 10 epochs (log.every=10): 1001 epochs of train_loss, val_loss, val_r2,
val_rmse, lr and 101 logged epochs of 9 layers' probes. Each timing is one whole api.run in this
process (records written, the logger opened and closed); the three loggers alternate, after one
warm-up run of each (imports; MLflow's first run also creates its SQLite store, timed on its own).
Medians of `--repeats`, and each logger's median over logger=none's.

    python bench/logger_bench.py [--repeats 3]

Needs deeprun[tensorboard,mlflow]. Everything is written in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODEL_D = ["depth=8", "width=8", "init=uniform", "optimizer=sgd", "lr=0.01", "epochs=1000", "data.n=400",
           "act=sigmoid", "log.every=10", "log.progress=false", "device=cpu"]
LOGGERS = ("none", "tensorboard", "mlflow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports from a benchmark

    import deeprun
    from deeprun import api

    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        cfgs = {name: deeprun.compose([*MODEL_D, f"logger={name}",
                                       *([f"logger.tracking_uri={store}"] if name == "mlflow" else [])])
                for name in LOGGERS}
        count = iter(range(10 ** 6))

        def timed(name: str) -> float:
            start = time.perf_counter()
            result = api.run(cfgs[name], out_dir=Path(tmp) / f"{name}_{next(count)}")
            seconds = time.perf_counter() - start
            assert result.summary["status"] == "completed", result.summary
            return seconds

        first = {name: timed(name) for name in LOGGERS}  # warm-up: imports, the fresh SQLite store
        times: dict[str, list[float]] = {name: [] for name in LOGGERS}
        for _ in range(args.repeats):
            for name in LOGGERS:
                times[name].append(timed(name))

    base = statistics.median(times["none"])
    print(f"model D, 1000 epochs, log.every=10; api.run, medians of {args.repeats} (torch threads: 1)")
    print(f"{'logger':<12} {'seconds':>8} {'ratio':>6}  runs")
    for name in LOGGERS:
        median = statistics.median(times[name])
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<12} {median:8.2f} {median / base:6.2f}  {runs}")
    print(f"first mlflow run, creating its SQLite store: {first['mlflow']:.2f} s "
          f"({first['mlflow'] - statistics.median(times['mlflow']):+.2f} s over a later run)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
