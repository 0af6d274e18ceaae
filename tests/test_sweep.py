"""Sweeps as a user runs them: one results table, failing and diverging jobs recorded, every
launcher, resume after SIGKILL, strict, expect, debug=smoke, Optuna; and the sweep helpers.

The module's sweeps are background jobs (conftest.background: each a torch import and several
jobs), started with the session; each test then reads its sweep's result.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import background, output, run_cli as _run_cli, run_dirs, start_cli, together
from deeprun import sweep
from deeprun.cli import one_line
from deeprun.records import config_key, missed_expectation

TINY = ["epochs=5", "depth=2", "width=8", "data.n=64", "optimizer=sgd"]
# lr axis: fine, invalid (the job fails), far too large (it diverges), fine
GRID = ["lr=0.01,-1,1e6,0.001"]
STATUS_BY_LR = {0.01: "completed", -1.0: "failed", 1e6: "diverged", 0.001: "completed"}
ENV = {"COLUMNS": "300"}


def run_cli(*args: str, cwd: Path, **kw):
    return _run_cli(*args, cwd=cwd, env=ENV, **kw)


def sweep_dirs(root: Path) -> list[Path]:
    return sorted((root / "outputs" / "sweeps").iterdir())


# --- the module's commands, in the background -------------------------------------------------


@background
def submitit_sweep(d: Path):
    return run_cli("-m", *TINY, *GRID, "hydra/launcher=submitit_local", cwd=d)


@background
def two_sweeps(d: Path):
    """The basic and the joblib launcher on the same grid, started in the same directory at once
    (the batched launcher, -m's default, has tests/test_launcher.py)."""
    return together(lambda: run_cli("-m", *TINY, *GRID, "hydra/launcher=basic", cwd=d),
                    lambda: run_cli("-m", *TINY, *GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=d))


@background
def alone_run(d: Path):
    """The grid's first job as a single run, with torch's own thread count (no OMP_NUM_THREADS)."""
    return _run_cli(*TINY, "lr=0.01", "log.progress=false", "hydra.run.dir=alone", cwd=d,
                    env={"OMP_NUM_THREADS": None})


@background
def optuna_sweep(d: Path):
    """A study whose search space holds an lr that diverges: the study must still run every trial."""
    return run_cli("-m", *TINY, "hparams_search=lr_width", "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.params.lr='choice(1e6,0.01)'", "hydra.sweeper.params.width='choice(4,8)'", cwd=d)


@background
def strict_sweep(d: Path):
    return run_cli("-m", *TINY, "lr=-1,0.01,0.02", "strict=true", cwd=d)


@background
def expect_runs(d: Path):
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "c").mkdir()
    return (run_cli(*TINY, "lr=0.01", "expect.final_train_loss_below=1e-9", "log.progress=false", cwd=d / "a"),
            run_cli(*TINY, "lr=0.01", "expect.final_train_loss_below=1e9", "expect.grad_norm_first_above=0",
                    "log.progress=false", cwd=d / "b"),
            run_cli("-m", *TINY, "lr=0.01,0.001", "expect.val_r2_above=0.999", cwd=d / "c"))


@background
def smoke_run(d: Path):
    return run_cli("debug=smoke", "model=resnet", "depth=4", cwd=d)


KILLED = ["-m", "depth=1,2,3,4", "epochs=4000", "log.every=100", "width=4", "data.n=32", "hydra.sweep.dir=S"]


@background
def killed_sweep(d: Path):
    """A sweep SIGKILLed (the whole process group) once a job completed, then run again with resume=true:
    (results.csv before the resume, each finished run's summary.json mtime then, the resumed command)."""
    proc = start_cli(*KILLED, cwd=d, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = d / "S" / "results.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (results.exists() and "completed" in results.read_text()):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, mid-way
    proc.wait()
    before = pd.read_csv(results)
    stamps = {r: (d / "S" / r / "summary.json").stat().st_mtime_ns for r in before[before.status == "completed"].run}
    return before, stamps, run_cli(*KILLED, "resume=true", cwd=d)


# --- the results table -------------------------------------------------------------------------


def check_grid(directory: Path, proc: subprocess.CompletedProcess) -> pd.DataFrame:
    """A GRID sweep's results.csv: 4 rows, each lr with its status; the table printed; exit 1 (a job failed)."""
    assert proc.returncode == 1, output(proc)
    assert "Traceback" not in proc.stderr, output(proc)
    results = pd.read_csv(directory / "results.csv")
    assert len(results) == 4, results
    assert dict(zip(results.lr, results.status)) == STATUS_BY_LR
    failed = results[results.status == "failed"].iloc[0]
    assert "lr=-1.0: must be > 0" in failed.error
    diverged = results[results.status == "diverged"].iloc[0]
    assert 1 <= diverged.diverged_epoch <= 5
    assert results.run.nunique() == 4 and all((directory / r / "summary.json").is_file() for r in results.run)
    assert results.config_key.nunique() == 4
    # the rich table: the swept column and each status
    assert "results.csv" in proc.stdout and re.search(r"┃\s+lr\s+┃", proc.stdout), output(proc)
    for status in ("completed", "failed", "diverged"):
        assert status in proc.stdout
    return results


def test_basic_and_joblib_sweeps_each_end_in_one_table(two_sweeps):
    d, (basic, joblib) = two_sweeps.dir, two_sweeps.result
    dirs = sweep_dirs(d)
    assert len(dirs) == 2, f"two sweeps started together must not share a directory: {dirs}"
    by_launcher = {}
    for directory in dirs:
        hydra_overrides = yaml.safe_load((directory / "multirun.yaml").read_text())["hydra"]["overrides"]["hydra"]
        by_launcher["joblib" if "hydra/launcher=joblib" in hydra_overrides else "basic"] = directory
    basic_results = check_grid(by_launcher["basic"], basic)
    joblib_results = check_grid(by_launcher["joblib"], joblib)
    # the same work gives the same numbers, whichever launcher ran it
    cols = ["lr", "status", "final_train_loss", "grad_norm_first"]
    pd.testing.assert_frame_equal(basic_results[cols], joblib_results[cols])
    # two joblib workers share the cores: each job's torch gets its half
    cores = len(os.sched_getaffinity(0))
    ran = joblib_results[joblib_results.status != "failed"]
    assert (ran.threads == max(cores // 2, 1)).all(), ran.threads


def test_a_job_writes_the_same_records_alone_and_under_either_launcher(two_sweeps, alone_run):
    """Determinism: byte for byte, but for epochs.csv's wall-clock `seconds` column."""
    d, alone_dir, alone = two_sweeps.dir, alone_run.dir, alone_run.result
    assert alone.returncode == 0, output(alone)
    jobs = [next(p for p in directory.iterdir() if p.name.startswith("0_")) for directory in sweep_dirs(d)]
    assert len(jobs) == 2
    layers = (alone_dir / "alone" / "layers.csv").read_bytes()
    epochs = without_seconds(alone_dir / "alone" / "epochs.csv")
    assert len(epochs.splitlines()) == 7  # header, epochs 0 to 5
    for job in jobs:
        assert (job / "layers.csv").read_bytes() == layers, job
        assert without_seconds(job / "epochs.csv") == epochs, job


def without_seconds(path: Path) -> str:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frame.drop(columns="seconds").to_csv(index=False)


@pytest.mark.slow
def test_submitit_local_sweep_ends_in_one_table(submitit_sweep):
    d, proc = submitit_sweep.dir, submitit_sweep.result
    (directory,) = sweep_dirs(d)
    check_grid(directory, proc)
    assert (directory / ".submitit").is_dir()


def test_job_directories_are_named_by_their_overrides(two_sweeps):
    d = two_sweeps.dir
    for directory in sweep_dirs(d):  # joblib hands Hydra the value as it parsed it: lr=1000000.0
        names = sorted(p.name.replace("1000000.0", "1e6") for p in directory.iterdir() if p.is_dir())
        assert names[:4] == [f"{i}_data.n=64,depth=2,epochs=5,lr={lr},optimizer=sgd,width=8"
                             for i, lr in enumerate(["0.01", "-1", "1e6", "0.001"])]


# --- strict, expect, smoke ---------------------------------------------------------------------


def test_strict_stops_the_sweep_at_the_first_failure(strict_sweep):
    d, proc = strict_sweep.dir, strict_sweep.result
    assert proc.returncode == 1, output(proc)
    assert "job 0 failed and strict=true: sweep stopped" in proc.stderr
    assert "Traceback" not in proc.stderr
    (directory,) = sweep_dirs(d)
    results = pd.read_csv(directory / "results.csv")
    assert list(results.status) == ["failed"]  # jobs 1 and 2 never started


def test_expect_exits_1_with_one_line_when_a_run_misses_it(expect_runs):
    missed, met, in_sweep = expect_runs.result
    assert missed.returncode == 1, output(missed)
    (line,) = [ln for ln in missed.stderr.splitlines() if ln.strip()]
    assert line.startswith("deeprun: expect.final_train_loss_below=1e-09 missed: final_train_loss = ")
    assert met.returncode == 0, output(met)
    assert in_sweep.returncode == 1, output(in_sweep)
    assert in_sweep.stderr.count("expect.val_r2_above=0.999 missed: val_r2 = ") == 2


def test_expect_miss_is_recorded_in_the_summary(expect_runs):
    d = expect_runs.dir
    (run,) = run_dirs(d / "a")
    assert json.loads((run / "summary.json").read_text())["expect_missed"].startswith("expect.final_train_loss_below")
    (run,) = run_dirs(d / "b")
    assert json.loads((run / "summary.json").read_text())["expect_missed"] is None


def test_debug_smoke_is_one_epoch_on_64_rows(smoke_run):
    d, proc = smoke_run.dir, smoke_run.result
    assert proc.returncode == 0, output(proc)
    (run,) = run_dirs(d)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1 and summary["data.max_rows"] == 64
    assert list(pd.read_csv(run / "epochs.csv").epoch) == [0, 1]
    assert proc.stdout == ""  # no progress bar, no table: a quiet CI log


# --- Optuna ------------------------------------------------------------------------------------


def test_optuna_study_survives_a_diverging_trial(optuna_sweep):
    d, proc = optuna_sweep.dir, optuna_sweep.result
    assert proc.returncode == 0, output(proc)
    (directory,) = sweep_dirs(d)
    results = pd.read_csv(directory / "results.csv")
    assert len(results) == 4
    assert set(results.status) <= {"completed", "diverged"} and "diverged" in set(results.status), results.status
    best = yaml.safe_load((directory / "optimization_results.yaml").read_text())
    completed = results[results.status == "completed"]
    assert best["best_value"] == pytest.approx(completed.best_val_loss.min())
    assert best["best_params"]["lr"] == 0.01
    assert "alembic" not in output(proc)  # optuna imports it; its per-plugin INFO lines are kept out


# --- resume after SIGKILL ----------------------------------------------------------------------


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_jobs(killed_sweep):
    d = killed_sweep.dir / "S"
    before, stamps, again = killed_sweep.result
    done = before[before.status == "completed"]
    assert 1 <= len(done) < 4, before.status
    assert again.returncode == 0, output(again)
    assert again.stderr.count("skipped: finished before") == len(done)
    after = pd.read_csv(d / "results.csv")
    assert len(after) == 4 and set(after.status) == {"completed"}, after[["run", "status"]]
    assert after.config_key.is_unique and sorted(after.depth) == [1, 2, 3, 4]
    assert {r: (d / r / "summary.json").stat().st_mtime_ns for r in done.run} == stamps  # not re-run
    for run in after.run:  # every record whole
        json.loads((d / run / "summary.json").read_text())
        assert len(pd.read_csv(d / run / "epochs.csv")) == 4001


# --- the helpers -------------------------------------------------------------------------------


def test_job_dir_names_are_readable_or_hashed():
    assert sweep.job_dir(3, "act=tanh,depth=8") == "3_act=tanh,depth=8"
    assert sweep.job_dir(0, "") == "0"
    odd = sweep.job_dir(1, "data.path=/data/my houses.csv")
    assert odd.startswith("1_") and "/" not in odd and " " not in odd and len(odd) == 12
    assert sweep.job_dir(1, "x=" + "a" * 100) != sweep.job_dir(1, "x=" + "a" * 99)


@pytest.mark.parametrize("launcher, expected", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, "half"),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "cpus_per_task": 3}, 3),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, None),
])
def test_job_threads_share_the_cores_among_workers(launcher, expected):
    cores = len(os.sched_getaffinity(0))
    want = max(cores // 2, 1) if expected == "half" else expected
    assert sweep.job_threads(OmegaConf.create({"launcher": launcher})) == want


def test_objective_is_the_column_or_the_finite_penalty():
    cfg = OmegaConf.create({"objective": "best_val_loss", "penalty": 1e9})
    assert sweep.objective(cfg, {"status": "completed", "best_val_loss": 0.25}) == 0.25
    assert sweep.objective(cfg, {"status": "diverged", "best_val_loss": 0.25}) == 1e9
    assert sweep.objective(cfg, {"status": "completed", "best_val_loss": float("nan")}) == 1e9
    assert sweep.objective(cfg, {"status": "failed"}) == 1e9


def test_config_key_ignores_how_a_run_is_driven(compose_tiny):
    base = config_key(compose_tiny())
    assert config_key(compose_tiny("resume=true", "strict=true", "log.progress=true",
                                   "expect.final_val_loss_below=1")) == base
    assert config_key(compose_tiny("seed=1")) != base
    assert config_key(compose_tiny("optimizer.weight_decay=0.1")) != base


def test_missed_expectation_names_key_bound_and_value():
    expect = OmegaConf.create({"final_val_loss_below": 0.1, "val_r2_above": None})
    assert missed_expectation(expect, {"final_val_loss": 0.05, "status": "completed"}) is None
    assert missed_expectation(expect, {"final_val_loss": 0.5, "status": "completed"}) == \
        "expect.final_val_loss_below=0.1 missed: final_val_loss = 0.5 (status completed)"
    assert missed_expectation(expect, {"status": "failed"}) == \
        "expect.final_val_loss_below=0.1 missed: final_val_loss = missing (status failed)"


def test_missing_plugin_names_the_extra_to_install():
    e = MissingConfigException("not found", missing_cfg_file="hydra/sweeper/optuna", options=["basic"])
    assert one_line(e) == "hydra/sweeper=optuna: its Hydra plugin is not installed; pip install 'deeprun[optuna]'"
    e = MissingConfigException("not found", missing_cfg_file="hydra/launcher/submitit_slurm", options=["basic"])
    assert one_line(e).endswith("pip install 'deeprun[slurm]'")


def test_missing_plugin_names_the_override_that_chose_it(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["deeprun", "-m", "depth=2", "hparams_search=lr_width", "epochs=3"])
    e = MissingConfigException("not found", missing_cfg_file="hydra/sweeper/optuna", options=["basic"])
    assert one_line(e) == ("hparams_search=lr_width needs hydra/sweeper=optuna, whose Hydra plugin is not "
                           "installed; pip install 'deeprun[optuna]'")


def test_slurm_launcher_config_composes(main):
    p = main("--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert p.code == 0, p.err
    launcher = yaml.safe_load(p.out)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1 and launcher["array_parallelism"] == 32


def test_device_spread_puts_job_k_on_gpu_k_mod_count(monkeypatch):
    import torch

    from deeprun.data import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(resolve_device("cuda", job)) for job in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert str(resolve_device("auto", 3)) == "cuda:1"
    assert str(resolve_device("cuda")) == "cuda"
    assert str(resolve_device("cpu", 3)) == "cpu"


def test_records_are_readable_by_others_as_the_umask_allows(tmp_path):
    """mkstemp creates owner-only files; records are meant for lab mates and shared clusters."""
    from deeprun.records import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "x.json", lambda f: f.write("{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~0o022


def test_a_config_key_only_later_jobs_have_still_comes_before_status(tmp_path):
    """A grid of mlp and resnet jobs: model.residual_scale is config, whichever job came first."""
    from deeprun.records import results_frame

    first = {"model": "mlp", "depth": 2, "status": "completed", "final_train_loss": 0.5}
    later = {"model": "resnet", "model.residual_scale": "rezero", "depth": 2, "status": "completed",
             "final_train_loss": 0.25}
    for i, summary in enumerate([first, later]):
        (tmp_path / f"{i}_job").mkdir()
        (tmp_path / f"{i}_job" / "summary.json").write_text(json.dumps(summary))
        sweep.add_result(tmp_path, tmp_path / f"{i}_job")
    expected = ["model", "depth", "model.residual_scale", "status", "final_train_loss", "overrides", "run"]
    assert list(pd.read_csv(tmp_path / "results.csv").columns) == expected  # row by row, as jobs finish
    assert list(results_frame([tmp_path]).columns) == expected  # the whole table, as the sweep ends


def test_a_sweep_into_a_dir_with_runs_needs_resume(tmp_path, main):
    """Refused before any job runs (and before Hydra rewrites multirun.yaml): the old sweep stays as it was."""
    old = tmp_path / "S" / "0_depth=1"
    old.mkdir(parents=True)
    (old / "summary.json").write_text(json.dumps({"status": "completed", "depth": 1}))
    (tmp_path / "S" / "multirun.yaml").write_text("old: sweep\n")
    before = {p: p.read_bytes() for p in (tmp_path / "S").rglob("*") if p.is_file()}
    p = main("-m", *TINY, "depth=1,2", "hydra.sweep.dir=S")
    assert p.code == 2, p
    assert p.err == ("deeprun: error: hydra.sweep.dir=S already holds 1 run; add resume=true to run only what is "
                     "not finished there, or choose another hydra.sweep.dir\n"), p
    assert {p: p.read_bytes() for p in (tmp_path / "S").rglob("*") if p.is_file()} == before


def test_the_sweep_callback_refuses_a_dir_with_runs_unless_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "_started", {})
    for i in range(2):
        (tmp_path / f"{i}_job").mkdir()
        (tmp_path / f"{i}_job" / "summary.json").write_text("{}")
    config = OmegaConf.create({"resume": False, "hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(sweep.DirTaken, match=r"already holds 2 runs; add resume=true"):
        sweep.SweepCallback().on_multirun_start(config)
    assert sweep.started_dir() is None  # so that finish() leaves the old results.csv alone
    config.resume = True
    sweep.SweepCallback().on_multirun_start(config)
    assert sweep.started_dir() == tmp_path
    config.resume, config.hydra.sweep.dir = False, str(tmp_path / "new")  # the default dir's timestamp: new each time
    sweep.SweepCallback().on_multirun_start(config)
    assert sweep.started_dir() == tmp_path / "new"
