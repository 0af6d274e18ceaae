"""Stacked sweeps (issue 15): what training a sweep's compatible jobs as one model buys, as ratios.

Each case measures its two sides in the same run, alternating them in each repeat (the side
that goes first swaps from one repeat to the next), and reports the median over repeats.
Everything runs with the defaults users get: no `device.threads`, no thread environment
variables (the script warns if the shell sets any, and removes them for the processes it starts).

1. A 20-seed sweep of the vanishing-gradient notebook's model D against the notebook's own NumPy
   loop: `deeprun -m depth=8 width=8 init=uniform optimizer=sgd lr=0.01 epochs=1000 data.n=400
   act=relu seed='range(0,20)'` against `python bench/numpy_seed001.py` (the same 20 trainings one
   after another in one process). Both are whole processes, start-up included. Ratio deeprun / NumPy.
2. A 100-job grid of model D (`act=relu,tanh,sigmoid,gelu,leaky_relu seed='range(0,20)'`) with the
   default launcher of `deeprun -m` (hydra/launcher=batched) against `hydra/launcher=basic`; whole
   processes. Ratio basic / batched (the speed-up).
3. Per-job overhead beyond training of that 100-job batched sweep, against a 1-job sweep of the
   same settings (`act=relu seed=0`) run in the same repeat:
       ((wall_100 - wall_1) - (train_100 - train_1)) / 99
   where train_N is the sum of results.csv's `seconds` column. Under stacked training a job's
   `seconds` is its share of its group's time (the group's time / `stack_size`, as api.run_group
   records it), so the sum over a sweep is the sweep's own training time. Without a `seconds`
   column the figure is wall-based, (wall_100 - wall_1) / 99, and says so.
4. Per-member training time of a stack of E=20 model-D members against a solo run, in this
   process through the Python API: wall time of `deeprun.api.run_group(cfgs, out_dirs)` / 20
   against `deeprun.api.run(cfg, out_dir)` (both write their records to a temporary folder).
   Where run_group still trains its members one after another, this ratio is about 1.
5., 6. (only with --cases 5,6: `make bench` runs bench/bench.py, which reports them, just before)
   deeprun with probes every epoch against the hand-written loop, in lockstep, same threads:
   model D, and the resnet of depth 100 and width 256; bench.py's `/ plain` median.

    python bench/stack_bench.py [--repeats 3] [--quick] [--cases 1,2,3,4]

--quick trains 4 seeds instead of 20 in cases 1-3 (so case 2 is a 20-job grid and case 3's
difference is over 19 jobs), and the resnet of case 6 for 2 epochs instead of 10; it is for trying the script out, not for figures: the
required and goal columns are for the full sizes. A full run (3 repeats of cases 1-4) takes
about 10 minutes on a 2-core machine, most of it the basic launcher (100 to 140 s a repeat).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
DEEPRUN = Path(sys.executable).with_name("deeprun")
NUMPY_LOOP = HERE / "numpy_seed001.py"
# the notebook's model D, layer_dims [3, 8 x 8, 1]: depth counts hidden layers
MODEL_D = ["depth=8", "width=8", "init=uniform", "optimizer=sgd", "lr=0.01", "epochs=1000", "data.n=400"]
ACTS = "act=relu,tanh,sigmoid,gelu,leaky_relu"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS", "TORCH_NUM_THREADS")
# case: (what, required, goal); "x" cases are ratios, "ms" case 3
TARGETS = {
    1: ("{seeds}-seed model-D sweep / NumPy loop, shell", "<= 1.0x", "<= 0.5x"),
    2: ("{jobs}-job grid: basic / batched launcher, shell", ">= 10x", ">= 20x"),
    3: ("per-job overhead beyond training, {jobs}-job batched sweep", "<= 30 ms", "<= 10 ms"),
    4: ("per-member training time, E=20 / solo, API", "<= 0.35", "<= 0.2"),
    5: ("model D, probes every epoch / hand-written loop", "<= 1.15", "<= 1.05"),
    6: ("resnet depth 100 width 256, probes every epoch / hand-written loop", "<= 1.05", "<= 1.02"),
}


def user_env() -> dict:
    """The environment a user's shell gives a process, without thread-count variables."""
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARS}


def timed(cmd: list[str], cwd: str) -> float:
    """Wall-clock seconds of one whole process, start-up included (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, env=user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def sweep(args: list[str]) -> tuple[float, pd.DataFrame]:
    """Wall-clock seconds of `deeprun -m ARGS` in a fresh folder, and its results.csv."""
    with tempfile.TemporaryDirectory() as d:
        wall = timed([str(DEEPRUN), "-m", *args, "hydra.sweep.dir=S"], d)
        results = pd.read_csv(Path(d) / "S" / "results.csv")
    assert (results.status == "completed").all(), results.status.value_counts()
    return wall, results


def numpy_loop(seeds: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        return timed([sys.executable, str(NUMPY_LOOP), "--seeds", str(seeds)], d)


def seed_range(seeds: int) -> str:
    return f"seed=range(0,{seeds})"  # as typed in a shell: seed='range(0,20)'


def alternate(i: int, *sides):
    """The sides in this repeat's order: as given in even repeats, reversed in odd ones."""
    return sides if i % 2 == 0 else sides[::-1]


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


# --- case 1 ----------------------------------------------------------------------------------


def case_numpy(repeats: int, seeds: int) -> dict:
    rows = []
    for i in range(repeats):
        t = {}
        for side in alternate(i, "deeprun", "numpy"):
            if side == "deeprun":
                t["deeprun"], results = sweep([*MODEL_D, "act=relu", seed_range(seeds)])
                assert len(results) == seeds
            else:
                t["numpy"] = numpy_loop(seeds)
        rows.append({**t, "ratio": t["deeprun"] / t["numpy"]})
    return {"ratio": median_of(rows, "ratio"), "repeats": repeats,
            "detail": f"{seeds} seeds: deeprun -m {median_of(rows, 'deeprun'):.2f} s, "
                      f"NumPy loop {median_of(rows, 'numpy'):.2f} s (medians)"}


# --- cases 2 and 3 ---------------------------------------------------------------------------


def training_seconds(results: pd.DataFrame) -> float | None:
    """The sweep's own training time: the sum of its jobs' `seconds` (a member's share of its
    group's time under stacked training); None without the column."""
    return float(results.seconds.sum()) if "seconds" in results else None


def case_launchers(repeats: int, seeds: int, basic: bool, overhead: bool) -> dict:
    """Per repeat: the grid batched, the grid with the basic launcher (case 2), the 1-job sweep
    (case 3); returns the rows for both cases."""
    grid = [*MODEL_D, ACTS, seed_range(seeds)]
    n = 5 * seeds
    rows = []
    for i in range(repeats):
        sides = ["batched"] + (["basic"] if basic else [])
        t: dict = {}
        for side in alternate(i, *sides):
            if side == "batched":
                t["batched"], results = sweep(grid)
                assert len(results) == n
                t["train_n"] = training_seconds(results)
                t["stack"] = int(results.stack_size.max()) if "stack_size" in results else None
            else:
                t["basic"], _ = sweep([*grid, "hydra/launcher=basic"])
        if overhead:
            t["one"], one = sweep([*MODEL_D, "act=relu", "seed=0"])
            t["train_1"] = training_seconds(one)
        rows.append(t)
    out = {}
    if basic:
        for r in rows:
            r["speedup"] = r["basic"] / r["batched"]
        out[2] = {"ratio": median_of(rows, "speedup"), "repeats": repeats,
                  "detail": f"{n} jobs: basic {median_of(rows, 'basic'):.1f} s, "
                            f"batched {median_of(rows, 'batched'):.1f} s (medians)"}
    if overhead:
        wall_based = any(r["train_n"] is None or r["train_1"] is None for r in rows)
        for r in rows:
            extra_training = 0.0 if wall_based else r["train_n"] - r["train_1"]
            r["overhead"] = ((r["batched"] - r["one"]) - extra_training) / (n - 1)
        how = ("wall-based: results.csv has no seconds column, so training is counted as overhead" if wall_based
               else f"training from results.csv `seconds`: {median_of(rows, 'train_n'):.2f} s for {n} jobs "
                    f"({median_of(rows, 'train_n') / n * 1000:.0f} ms a job; largest stack_size "
                    f"{rows[0]['stack']}), {median_of(rows, 'train_1'):.2f} s for 1")
        out[3] = {"ratio": median_of(rows, "overhead"), "repeats": repeats, "unit": "ms",
                  "detail": f"walls: {n} jobs {median_of(rows, 'batched'):.2f} s, 1 job {median_of(rows, 'one'):.2f} s; "
                            f"{how}"}
    return out


# --- case 4 ----------------------------------------------------------------------------------


def case_api(repeats: int, members: int = 20) -> dict:
    import deeprun
    from deeprun import api, stack

    cfgs = [deeprun.compose([*MODEL_D, "act=relu", f"seed={s}", "log.progress=false"]) for s in range(members)]
    assert len({stack.group_key(c) for c in cfgs}) == 1, "the members' group keys differ"

    def solo() -> tuple[float, dict]:
        with tempfile.TemporaryDirectory() as d:
            start = time.perf_counter()
            result = api.run(cfgs[0], Path(d) / "solo", progress=False)
            wall = time.perf_counter() - start
        assert result.summary["status"] == "completed", result.summary
        return wall, result.summary

    def group() -> tuple[float, list[dict]]:
        with tempfile.TemporaryDirectory() as d:
            start = time.perf_counter()
            summaries = api.run_group(cfgs, [Path(d) / str(i) for i in range(members)])
            wall = time.perf_counter() - start
        assert all(s["status"] == "completed" for s in summaries), [s["status"] for s in summaries]
        return wall, summaries

    solo(), group()  # warm-up: torch's lazy initialisation, the first optimiser, the allocator
    rows = []
    for i in range(repeats):
        t: dict = {}
        for side in alternate(i, "solo", "group"):
            if side == "solo":
                t["solo"], _ = solo()
            else:
                t["group"], summaries = group()
                t["stack"] = summaries[0].get("stack_size")
                t["threads"] = summaries[0].get("threads")
        rows.append({**t, "ratio": t["group"] / members / t["solo"]})
    stacked = rows[0]["stack"]
    how = (f"stack_size {stacked}" if stacked and stacked > 1
           else "run_group trained the members one after another (no stack_size > 1): a ratio near 1 is expected")
    return {"ratio": median_of(rows, "ratio"), "repeats": repeats,
            "detail": f"solo {median_of(rows, 'solo'):.3f} s, {members} members "
                      f"{median_of(rows, 'group'):.3f} s ({median_of(rows, 'group') / members * 1000:.0f} ms a member; "
                      f"medians; {how}; {rows[0]['threads']} torch thread(s), deeprun's choice)"}


# --- cases 5 and 6 (bench.py's lockstep) -----------------------------------------------------


def case_lockstep(case: str, repeats: int, quick: bool) -> dict:
    import bench  # bench/bench.py, next to this script

    if quick and case == "resnet":  # 2 epochs instead of 10: a round in seconds rather than minutes
        bench.CASES = {**bench.CASES, case: [*(o for o in bench.CASES[case] if not o.startswith("epochs=")),
                                             "epochs=2"]}
    rounds = bench.bench(case, bench.VARIANTS["probes every epoch"], repeats, "cpu")
    return {"ratio": statistics.median(rounds.ratios(1)), "repeats": repeats,
            "detail": f"quiet {rounds.quiet(1):.3f}; plain {rounds.seconds(1):.2f} s, "
                      f"deeprun {rounds.seconds(0):.2f} s (medians); bench.py --only {case}"}


# --- report ----------------------------------------------------------------------------------


def shown(row: dict) -> str:
    if row.get("unit") == "ms":
        return f"{row['ratio'] * 1000:.1f} ms"
    return f"{row['ratio']:.3f}" + ("x" if row["case"] in (1, 2) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="4 seeds instead of 20 in cases 1-3, 2 resnet epochs in case 6: to try things out")
    parser.add_argument("--cases", default="1,2,3,4", help="comma-separated, of 1-6 (default 1,2,3,4)")
    args = parser.parse_args()
    cases = sorted({int(c) for c in args.cases.split(",")})
    assert set(cases) <= set(TARGETS), f"--cases: pick from {sorted(TARGETS)}"
    seeds = 4 if args.quick else 20
    set_vars = [k for k in THREAD_VARS if k in os.environ]
    if set_vars:
        print(f"warning: {', '.join(set_vars)} set in this shell; removed for the processes started here, "
              f"but cases 4-6 run in this process and follow them")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; medians of {args.repeats} repeats"
          + ("; --quick: not the sizes the targets are for" if args.quick else ""), flush=True)
    if set(cases) & {1, 2, 3}:
        with tempfile.TemporaryDirectory() as d:  # warm-up: torch's files into the page cache
            timed([str(DEEPRUN), "-m", *[o for o in MODEL_D if not o.startswith("epochs=")], "epochs=1", "seed=0",
                   "hydra.sweep.dir=S"], d)

    rows: dict[int, dict] = {}
    if 1 in cases:
        rows[1] = case_numpy(args.repeats, seeds)
    if 2 in cases or 3 in cases:
        rows.update(case_launchers(args.repeats, seeds, basic=2 in cases, overhead=3 in cases))
    if 4 in cases:
        rows[4] = case_api(args.repeats)
    for case, name in ((5, "model_d"), (6, "resnet")):
        if case in cases:
            rows[case] = case_lockstep(name, args.repeats, args.quick)

    print("\n| case | ratio (median) | required | goal | repeats |\n|---|---|---|---|---|")
    for case in cases:
        row = {**rows[case], "case": case}
        what, required, goal = TARGETS[case]
        what = what.format(seeds=seeds, jobs=5 * seeds)
        print(f"| {case}. {what} | {shown(row)} | {required} | {goal} | {row['repeats']} |")
    print()
    for case in cases:
        print(f"{case}. {rows[case]['detail']}")


if __name__ == "__main__":
    main()
