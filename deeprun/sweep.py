"""Sweeps on Hydra's own engines: job directories, resume, the results table.

Hydra's sweepers (the basic grid, Optuna) choose the jobs and its launchers (basic,
joblib, submitit) run them. deeprun adds what they lack:

- each job records itself and never aborts the sweep (``strict=true`` restores fail-fast);
- a job directory is named by its overrides (``3_act=tanh,depth=8``), so distinct jobs
  never share one, not even when a re-run numbers them differently;
- ``resume=true`` skips a job whose config (``config_key``) already has a finished record
  in the sweep directory, whatever its job number;
- ``results.csv`` gets each job's row as the job ends, and is rebuilt from all the job
  directories when the sweep does, in the main process, so it is right whichever launcher ran
  the jobs and however the sweep ended (Hydra's ``on_multirun_end`` is skipped when a job raises).

No torch here: the end of a sweep only reads records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

try:  # POSIX; elsewhere results.csv is still rebuilt whole when the sweep ends
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

_started: dict[str, Path] = {}  # main process: the directory of the sweep under way


class JobFailed(BaseException):
    """strict=true: a job failed. A BaseException so that Hydra's job runner, which records an
    Exception and runs the remaining jobs, lets it end the sweep at once."""


class DirTaken(BaseException):
    """A sweep into a hydra.sweep.dir that holds runs, without resume=true. A BaseException: Hydra turns
    an Exception raised in a callback into a warning, and would launch the jobs all the same."""


class SweepCallback(Callback):
    """Notes the sweep directory when a multirun starts (main process), for finish(); refuses one that
    already holds runs unless resume=true (its jobs would mix with theirs in one results.csv)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        directory = Path(config.hydra.sweep.dir)
        if not config.get("resume") and directory.is_dir():
            from .records import find_runs

            runs = len(find_runs([directory]))
            if runs:
                raise DirTaken(f"hydra.sweep.dir={directory} already holds {runs} run{'' if runs == 1 else 's'}; "
                               f"add resume=true to run only what is not finished there, or choose another "
                               f"hydra.sweep.dir")
        _started["dir"] = directory


def started_dir() -> Optional[Path]:
    return _started.get("dir")


SAFE_NAME = re.compile(r"[A-Za-z0-9_.,=+\-]{1,80}")


def job_dir(num: int, overrides: str) -> str:
    """hydra.sweep.subdir: `<num>_<overrides>`, or `<num>_<hash of overrides>` when they are long or
    hold characters a file name should not."""
    if not overrides:
        return str(num)
    tag = overrides if SAFE_NAME.fullmatch(overrides) else hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"{num}_{tag}"


OmegaConf.register_new_resolver("deeprun_job_dir", job_dir, replace=True)


def job_threads(hydra_cfg: DictConfig) -> Optional[int]:
    """Torch threads for one job of a parallel launcher: the cores shared out among its workers, so
    that N workers do not each start one thread per core. None: torch's own default."""
    launcher = hydra_cfg.launcher
    target = str(launcher.get("_target_", ""))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if "joblib" in target.lower():
        n_jobs = launcher.get("n_jobs") or -1
        workers = n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1)  # joblib: -1 is every core, -2 all but one
        return max(cores // min(workers, cores), 1)
    if "submitit" in target.lower():
        return launcher.get("cpus_per_task") or None
    return None


def finished_run(directory: Path, key: str) -> Optional[tuple[Path, dict]]:
    """(run directory, summary) of a run under `directory` with config_key `key` and a finished
    record (completed or diverged); None if there is none."""
    return finished_runs(directory).get(key)


def finished_runs(directory: Path) -> dict[str, tuple[Path, dict]]:
    """config_key -> (run directory, summary) of every finished run under `directory`, the first in
    natural order where several share a key: one pass over the records, for a whole batch of jobs."""
    from .records import FINISHED, find_runs, record_of

    found: dict[str, tuple[Path, dict]] = {}
    for run in find_runs([directory]):
        with contextlib.suppress(OSError, ValueError, TypeError):  # TypeError: the record went meanwhile
            summary = json.loads(record_of(run).read_text())
            if summary.get("status") in FINISHED:
                found.setdefault(summary.get("config_key"), (run, summary))
    return found


def objective(cfg: DictConfig, summary: dict) -> float:
    """The value a sweeper minimises: the `objective` column, or the finite `penalty` when the run
    failed, diverged or has no such number (an Optuna study must go on)."""
    value = summary.get(cfg.objective)
    if summary.get("status") != "completed" or not isinstance(value, (int, float)) or not math.isfinite(value):
        return float(cfg.penalty)
    return float(value)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive lock on the sweep directory while results.csv is rebuilt: jobs ending together
    (joblib, submitit) take turns, so the last write holds every job that had ended."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_results(directory: Path):
    """Rebuild `directory`/results.csv from all its job records; the table as a DataFrame."""
    from .records import RESULTS, results_frame, write_table

    with _locked(directory):
        frame = results_frame([directory], relative_to=directory)
        write_table(directory / RESULTS, frame)
    return frame


def add_result(directory: Path, run_dir: Path) -> None:
    """Put one job's row into `directory`/results.csv (replacing an older row of the same job
    directory): a job reads one table, not every record of the sweep, so a long sweep stays cheap."""
    add_results(directory, [run_dir])


def add_results(directory: Path, run_dirs: list[Path]) -> None:
    """add_result for several jobs at once (a batched launcher's group): one read and one write of the table."""
    import pandas as pd

    from .records import RESULTS, column_order, natural_key, results_frame, write_table

    with _locked(directory):
        rows = results_frame(run_dirs, relative_to=directory)
        if rows.empty:  # the jobs left no record (their directories could not be written)
            return
        path = directory / RESULTS
        if path.exists():
            table = pd.read_csv(path, dtype={"run": str})  # a job dir named `0` is a name, not a number
            order = column_order([table.columns, rows.columns])
            table = pd.concat([table[~table["run"].isin(rows["run"])], rows], ignore_index=True)[order]
            table = table.iloc[sorted(range(len(table)), key=lambda i: natural_key(table["run"].iloc[i]))]
        else:
            table = rows
        write_table(path, table)


def finish(directory: Path) -> int:
    """End of a sweep (main process): final results.csv, the rich table; exit status 1 when a job
    failed or missed an `expect`, else 0."""
    if not directory.is_dir():
        return 0
    frame = write_results(directory)
    from .display import print_results

    print_results(frame, title=f"{len(frame)} job{'' if len(frame) == 1 else 's'}: {directory / 'results.csv'}",
                  source=str(directory))
    failed = (frame.get("status") == "failed").any() if len(frame) else False
    missed = frame["expect_missed"].notna().any() if "expect_missed" in frame else False
    if missed:
        for _, row in frame[frame["expect_missed"].notna()].iterrows():
            print(f"deeprun: {row['run']}: {row['expect_missed']}", file=sys.stderr)
    return 1 if failed or missed else 0
