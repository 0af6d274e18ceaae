"""deeprun-diagnose (issue 16): how long a diagnosis takes, with the defaults users get.

1. Diagnosis time of a 100-block residual MLP of width 256 (`model=resnet depth=100 width=256`)
   and of the vanishing-gradient notebook's model D, in this process through `deeprun.diagnose`
   (start-up apart: torch and deeprun are imported, and one diagnosis of a tiny net has run).
2. `deeprun.meanfield.analyse` for tanh at its critical point and for ReLU.
3. A 30-job diagnosis sweep from the shell, whole process, start-up included:
   `deeprun-diagnose -m act=relu,tanh,sigmoid,gelu,selu depth=2,10,20,50,100,200`, beside the same
   grid trained for one epoch (`deeprun -m ... epochs=1`) in the same repeat.

Medians over repeats; the machine is shared, so compare the figures of one run with each other.

    python bench/diagnose_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import deeprun
from deeprun import meanfield

BIN = Path(sys.executable).parent
MODEL_D = ["model.widths=[8,8,8,8,8,8,8,8]", "act=sigmoid", "init=uniform", "init.a=0.5"]
GRID = ["act=relu,tanh,sigmoid,gelu,selu", "depth=2,10,20,50,100,200"]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shell(program: str, *args: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        subprocess.run([str(BIN / program), "-m", *args, "log.progress=false", f"hydra.sweep.dir={d}/s"],
                       check=True, capture_output=True, cwd=d)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    deeprun.diagnose(deeprun.compose(["depth=2", "width=4", "log.progress=false"]))  # imports, first calls
    resnet = deeprun.compose(["model=resnet", "depth=100", "width=256", "log.progress=false"])
    model_d = deeprun.compose([*MODEL_D, "log.progress=false"])
    print(f"resnet depth 100 width 256: {median_time(lambda: deeprun.diagnose(resnet.copy()), repeats):.2f} s "
          f"(diagnose.draws={resnet.diagnose.draws}, rows={resnet.diagnose.rows})")
    print(f"model D: {median_time(lambda: deeprun.diagnose(model_d.copy()), repeats) * 1e3:.0f} ms")
    for act, sigma_w2, sigma_b2 in (("tanh", 1.7609546, 0.05), ("relu", 2.0, 0.0), ("gelu", 1.5, 0.1)):
        seconds = median_time(lambda: meanfield.analyse(act, sigma_w2, sigma_b2), 51)
        print(f"meanfield.analyse({act}, {sigma_w2}, {sigma_b2}): {seconds * 1e3:.2f} ms")
    diagnosis, training = [], []
    for i in range(repeats):
        pair = [("deeprun-diagnose", diagnosis, GRID), ("deeprun", training, [*GRID, "epochs=1"])]
        for program, out, args in (pair if i % 2 == 0 else pair[::-1]):  # who goes first alternates
            out.append(shell(program, *args))
    d, t = statistics.median(diagnosis), statistics.median(training)
    print(f"30-job sweep from the shell: deeprun-diagnose {d:.1f} s, deeprun epochs=1 {t:.1f} s "
          f"(diagnosis / one-epoch training {d / t:.2f})")


if __name__ == "__main__":
    main()
