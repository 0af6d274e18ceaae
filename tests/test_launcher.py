"""hydra/launcher=batched, the default of `deeprun -m`: groups, records, resume, Ctrl-C, strict, submitit,
and the memoising config loader, whose configs must be Hydra's own.

Most sweeps run in this process (`cli.main` with sys.argv set: no torch start-up per sweep); the
signals need a `deeprun` process (background jobs: conftest.background), and so does submitit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import run_job, setup_globals
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.experimental.callback import Callback
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf, open_dict

from conftest import background, fast_first, run_dirs, run_main, start_cli
import deeprun
from deeprun import api, cli, launcher, sweep
from deeprun.config import conf_dir
from deeprun.records import config_key

TINY = ["epochs=3", "depth=2", "width=4", "data.n=64"]
ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "300"}


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def thaw():
    """FastConfigLoader freezes the heap (gc.freeze) until a launch ends; a test that calls it directly thaws it."""
    yield
    launcher._thaw_heap()


@pytest.fixture
def main(monkeypatch, capsys, tmp_path):
    """main(*args): `deeprun ARGS` in this process, in tmp_path; its exit status and output."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Ran:
        code = run_main(monkeypatch, *args)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)
    return run


@pytest.fixture
def groups(monkeypatch):
    """The size of each api.run_group call, in order."""
    sizes: list[int] = []
    real = api.run_group

    def spy(cfgs, out_dirs, threads=None, **kw):
        sizes.append(len(cfgs))
        return real(cfgs, out_dirs, threads=threads, **kw)
    monkeypatch.setattr(api, "run_group", spy)
    return sizes


def summaries(directory: Path) -> list[dict]:
    return [json.loads((d / "summary.json").read_text()) for d in run_dirs(directory)]


# --- the default, and the other launchers ------------------------------------------------------


@pytest.mark.slow
def test_minus_m_batches_by_default_and_basic_still_runs_one_job_at_a_time(main, groups, monkeypatch, tmp_path):
    calls: list[int] = []
    real = cli._sweep_job
    monkeypatch.setattr(cli, "_sweep_job", lambda cfg, hydra_cfg: calls.append(hydra_cfg.job.num) or real(cfg, hydra_cfg))
    batched = main("-m", *TINY, "seed=0,1,2", "hydra.sweep.dir=B")
    assert batched.code == 0, batched.err
    assert groups == [3] and calls == []
    assert "Launching 3 jobs locally in 1 group" in batched.out
    assert yaml.safe_load((tmp_path / "B" / "multirun.yaml").read_text())["hydra"]["launcher"]["_target_"] == \
        "hydra_plugins.deeprun_launcher.BatchedLauncher"
    for i in range(3):
        assert f"deeprun: job {i} completed, best_val_loss " in batched.err

    basic = main("-m", *TINY, "seed=0,1,2", "hydra.sweep.dir=A", "hydra/launcher=basic")
    assert basic.code == 0, basic.err
    assert groups == [3] and calls == [0, 1, 2]
    # the same job directories, each with the same .hydra/config.yaml and overrides.yaml
    names = sorted(p.name for p in (tmp_path / "A").iterdir() if p.is_dir())
    assert names == sorted(p.name for p in (tmp_path / "B").iterdir() if p.is_dir())
    assert len(names) == 3
    for name in names:
        for f in ("config.yaml", "overrides.yaml"):
            assert (tmp_path / "A" / name / ".hydra" / f).read_text() == (tmp_path / "B" / name / ".hydra" / f).read_text()
    assert pd.read_csv(tmp_path / "B" / "results.csv").overrides.tolist() == \
        pd.read_csv(tmp_path / "A" / "results.csv").overrides.tolist()


@pytest.mark.slow
def test_a_grid_with_a_failing_a_diverging_and_unstackable_jobs(main, groups, tmp_path):
    """lr is a member key: the three scheduler=none jobs train as one stack, lr=-1 failing alone in it;
    scheduler=plateau cannot be stacked: each of those jobs is a group of one."""
    p = main("-m", *TINY, "optimizer=sgd", "lr=0.01,1e6,-1", "scheduler=none,plateau", "hydra.sweep.dir=S")
    assert p.code == 1, p.err  # a job failed
    assert "Traceback" not in p.err
    assert groups == [3, 1, 1, 1]  # in order of each group's first job
    results = pd.read_csv(tmp_path / "S" / "results.csv")
    assert len(results) == 6 and results.run.is_unique
    by = {(r.scheduler, r.lr): r.status for r in results.itertuples()}
    for scheduler in ("none", "plateau"):
        assert by[(scheduler, 0.01)] == "completed"
        assert by[(scheduler, 1e6)] == "diverged"
        assert by[(scheduler, -1.0)] == "failed"
    assert "deeprun: job 4 failed: lr=-1.0: must be > 0 (4_" in p.err  # in its stack: as _sweep_job says it
    assert "deeprun: job 5 failed: lr=-1.0: must be > 0 (5_" in p.err
    assert p.err.count(" diverged, best_val_loss ") == 2
    assert "6 jobs: S/results.csv" in p.out


def test_strict_stops_at_the_first_failure_and_no_later_job_starts(main, groups, tmp_path):
    """Under strict=true a group gathers only consecutive jobs: job 2 would stack with job 0, but job 1 fails first."""
    p = main("-m", *TINY, "lr=0.01,-1,0.02", "strict=true", "hydra.sweep.dir=S")
    assert p.code == 1, p.err
    assert "deeprun: job 1 failed: lr=-1.0: must be > 0" in p.err
    assert "job 1 failed and strict=true: sweep stopped" in p.err and "Traceback" not in p.err
    assert groups == [1, 1]
    results = pd.read_csv(tmp_path / "S" / "results.csv")
    assert list(results.status) == ["completed", "failed"]
    assert not list((tmp_path / "S").glob("2_*"))  # never started: not even its directory


@pytest.mark.slow
def test_group_size_splits_a_group_and_a_bad_launcher_key_is_one_line(main, groups, monkeypatch, tmp_path):
    p = main("-m", *TINY, "seed=0,1,2", "hydra.launcher.group_size=2", "hydra.sweep.dir=S")
    assert p.code == 0, p.err
    assert groups == [2, 1]
    for args, line in [
        (["hydra.launcher.submitit=slrum"], "deeprun: error: hydra.launcher.submitit=slrum: choose null (train here), "
                                            "local or slurm\n"),
        (["hydra.launcher.group_size=0"], "deeprun: error: hydra.launcher.group_size=0: must be >= 1 or null "
                                          "(no limit)\n"),
    ]:
        bad = main("-m", *TINY, "seed=0,1", *args)
        assert (bad.code, bad.err) == (2, line)
    if shutil.which("srun") is None:  # off a cluster (CI): batched_slurm's executor cannot start, in one line
        off = main("-m", *TINY, "seed=0,1", "hydra/launcher=batched_slurm", "hydra.sweep.dir=T")
        assert off.code == 2 and off.err.startswith("deeprun: error: hydra.launcher.submitit=slurm: "), off.err
        assert len(off.err.splitlines()) == 1
        assert not list((tmp_path / "T").glob("*_*"))  # the executor is refused before any job directory
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a))
    missing = main("-m", *TINY, "seed=0,1", "hydra.launcher.submitit=local")
    assert (missing.code, missing.err) == (2, "deeprun: error: hydra.launcher.submitit=local needs submitit, which is "
                                              "not installed; pip install 'deeprun[slurm]'\n")
    assert groups == [2, 1]  # none of them trained


class JobProbe(Callback):
    """A user's Hydra callback: the batched launcher calls its job hooks as run_job would."""

    calls: list = []

    def on_job_start(self, config, **kwargs):
        JobProbe.calls.append(("start", config.hydra.job.num, HydraConfig.get().job.num))

    def on_job_end(self, config, job_return, **kwargs):
        JobProbe.calls.append(("end", config.hydra.job.num, job_return.return_value))


def test_user_callbacks_get_each_jobs_start_and_end(main):
    JobProbe.calls.clear()
    p = main("-m", *TINY, "seed=0,1", "+hydra.callbacks.probe._target_=test_launcher.JobProbe")
    assert p.code == 0, p.err
    assert JobProbe.calls[:2] == [("start", 0, 0), ("start", 1, 1)]
    assert [c[:2] for c in JobProbe.calls[2:]] == [("end", 0), ("end", 1)]
    assert all(isinstance(c[2], float) and c[2] < 1e9 for c in JobProbe.calls[2:])  # the objective


@pytest.mark.slow
def test_optuna_gets_one_objective_per_trial(main, tmp_path):
    p = main("-m", *TINY, "hparams_search=lr_width", "hydra.sweeper.n_trials=2", "hydra.sweep.dir=S")
    assert p.code == 0, p.err
    results = pd.read_csv(tmp_path / "S" / "results.csv")
    assert len(results) == 2 and set(results.status) == {"completed"}
    best = yaml.safe_load((tmp_path / "S" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(results.best_val_loss.min())


# --- the memoising config loader ----------------------------------------------------------------

# (sweep, Hydra compositions it needs: one per distinct set of structural overrides)
SWEEPS = [
    (["act=relu,tanh", "optimizer=sgd,adam", "lr=0.1,0.01", "hydra.sweep.dir=X"], 4),  # groups and values
    (["init=uniform", "init.a=0.3,0.5", "optimizer=sgd", "optimizer.momentum=0.9,0.5", "seed=0,1"], 1),  # nested keys
    (["model=custom", "model._target_=x.Y", "+model.hidden=16,32", "width=4,8"], 2),  # `+`: composed per value
    (["model.widths=[8,4],[4]", "data.n=64", "hydra.job.config.override_dirname.exclude_keys=[seed]", "seed=3,4"], 1),
    (["seed=1,2", "++seed=5", "depth=2,3"], 2),  # a plain override before a `++` one goes with it
    (["seed=range(6)", "epochs=1", "hydra.sweep.subdir=${hydra.job.num}_${hydra:job.name}"], 1),
]


@contextlib.contextmanager
def hydra_sweep(args: list[str]):
    """(the multirun's master config, Hydra's own config loader, the jobs' overrides) of `deeprun -m ARGS`."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        setup_globals()
        gh = GlobalHydra.instance()
        master = gh.hydra.compose_config("config", overrides=args, run_mode=RunMode.MULTIRUN)
        task = OmegaConf.to_container(master.hydra.overrides.task)
        jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task), None)[0]
        yield master, gh.config_loader(), jobs


@pytest.mark.parametrize("args, compositions", fast_first(SWEEPS, keep=SWEEPS[4:5], multi=True),
                         ids=["groups", "nested", "plus", "hydra", "order", "subdir"])
def test_fast_configs_are_hydras_own(args, compositions):
    with hydra_sweep(args) as (master, loader, jobs):
        fast = launcher.FastConfigLoader(loader)
        for overrides in jobs:
            mine, hydras = fast.load_sweep_config(master, overrides), loader.load_sweep_config(master, overrides)
            assert OmegaConf.to_container(mine) == OmegaConf.to_container(hydras), overrides
            assert OmegaConf.get_type(mine) is OmegaConf.get_type(hydras)  # the structured schema, not a plain dict
            assert OmegaConf.is_struct(mine) and OmegaConf.get_type(mine, "hydra") is OmegaConf.get_type(hydras, "hydra")
            config, task = fast.take(master, overrides)  # the launch reuses what the sweeper's check composed
            assert config is mine
            expected_task = launcher._without_hydra(hydras)
            assert OmegaConf.to_container(task) == OmegaConf.to_container(expected_task)
            assert OmegaConf.get_type(task) is OmegaConf.get_type(expected_task) and OmegaConf.is_struct(task)
        assert fast.compositions == compositions


# the tests' own compose (conftest.compose, behind tiny()): a template per list of group choices
TEST_COMPOSE = fast_first([
    ["model=resnet", "depth=4", "norm=layer", "model.residual_scale=rezero"], ["seed=1", "++seed=5"], ["lr=0"],
    ["experiment=init_comparison", "experiment/init_comparison=xavier_gain1", "epochs=3"],
    [], ["depth=2", "depth=3"], ["data=csv", "data.path=conftest.py", "data.target=x", "data.features=[a,b]"],
    ["model.widths=[8,4]", "act=tanh", "act.name=tanh"], ["data=images", "model=cnn", "depth=2", "data.n=32"],
    ["init=uniform", "init.a=0.5", "optimizer=sgd", "optimizer.momentum=0.9", "seed=3"], ["logger=mlflow"],
    ["act=leaky_relu", "act.negative_slope=0.2", "grad_clip=null", "batch_size=8", "log.loss_at=[1,2]"],
    ["+deprh=3"], ["model=custom", "model._target_=x.Y", "+model.hidden=16"],
    # mistakes: the same error, in the same words
    ["depth=four"], ["deprh=3"], ["act=foo"], ["optimizer=adam", "optimizer.momentum=0.9"], ["data=csv"],
], keep=3)


@pytest.mark.parametrize("overrides", TEST_COMPOSE, ids=lambda o: " ".join(o) if isinstance(o, list) else None)
def test_the_tests_compose_is_deeprun_compose(overrides, monkeypatch):
    import conftest

    monkeypatch.chdir(Path(conftest.__file__).parent)  # data.path=conftest.py: a file that exists

    def composed(compose):
        try:
            return compose(overrides), None
        except Exception as e:
            return None, (type(e), str(e))
    (mine, my_error), (theirs, their_error) = composed(conftest.compose), composed(deeprun.compose)
    assert my_error == their_error
    if theirs is not None:
        assert OmegaConf.to_container(mine) == OmegaConf.to_container(theirs)
        assert OmegaConf.get_type(mine) is OmegaConf.get_type(theirs) and OmegaConf.is_struct(mine)
        assert mine is not conftest.compose(overrides)  # a copy of its own, free to change


def test_a_job_directory_is_what_hydras_run_job_writes(tmp_path):
    """Byte for byte, .hydra/ of the batched launcher and of run_job, for the same job and output dir."""
    from hydra._internal.callbacks import Callbacks

    args = ["act=tanh,relu", "init=uniform", "init.a=0.3", f"hydra.sweep.dir={tmp_path}", "data=csv",
            "data.path='ü ä/x.csv'"]  # non-ASCII: blocks that OmegaConf's own dumper writes
    with hydra_sweep(args) as (master, loader, jobs):
        batched = launcher.Batched()
        context = HydraContext(config_loader=loader, callbacks=Callbacks())
        batched.setup(hydra_context=context, task_function=lambda cfg: None, config=master)
        for num, overrides in enumerate(jobs):
            config = loader.load_sweep_config(master, overrides)
            with open_dict(config):  # as the basic launcher numbers a job
                config.hydra.job.id = config.hydra.job.num = num
            ret = run_job(hydra_context=context, task_function=lambda cfg: None, config=config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            out = Path(ret.hydra_cfg.hydra.runtime.output_dir) / ".hydra"
            theirs = {f.name: f.read_bytes() for f in out.iterdir()}
            for f in out.iterdir():
                f.unlink()
            job = batched._prepare(launcher._Job(num, list(overrides), *context.config_loader.take(master, overrides)))
            batched._write_hydra_files(job)
            assert {f.name: f.read_bytes() for f in out.iterdir()} == theirs
            assert OmegaConf.to_container(job.cfg) == OmegaConf.to_container(ret.cfg)
            assert OmegaConf.to_container(job.hydra_cfg) == OmegaConf.to_container(ret.hydra_cfg)


# --- interruptions ------------------------------------------------------------------------------

SLOW = ["seed=0,1", "depth=1,2", "width=4", "data.n=32", "log.every=500", "hydra.sweep.dir=S"]
KILLED = [*SLOW, "epochs=3000"]
INTERRUPTED = [*SLOW, "epochs=4000", "save.checkpoints=[init]"]


def start(d: Path, *args: str):
    return start_cli("-m", *args, cwd=d, env=ENV)


def wait_for(condition, proc, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not condition():
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep ended before it was stopped: {proc.communicate()}"
    assert condition(), "the sweep never got there"


@background
def killed_batched_sweep(d: Path):
    """`deeprun -m KILLED` SIGKILLed (its process group) once a group finished: the summaries' mtimes then."""
    proc = start(d, *KILLED)
    results = d / "S" / "results.csv"
    wait_for(lambda: results.exists() and "completed" in results.read_text(), proc)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way: the first group finished, the second running or not yet
    proc.communicate()
    return {r: (d / "S" / r / "summary.json").stat().st_mtime_ns for r, s in statuses(d / "S").items()
            if s == "completed"}


@background
def interrupted_batched_sweep(d: Path):
    """`deeprun -m INTERRUPTED` sent SIGINT while both members of its first group train: (exit status, out, err)."""
    proc = start(d, *INTERRUPTED)
    # init.pt comes once a member's model is built: from then on its group is in run_group's hands
    wait_for(lambda: len(list((d / "S").glob("*/init.pt"))) == 2, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def statuses(directory: Path) -> dict[str, str]:
    return {d.name: json.loads((d / "summary.json").read_text())["status"] for d in run_dirs(directory)}


def check_complete(directory: Path, jobs: int) -> None:
    """Every job completed once: one finished record per config_key, results.csv a row per job, all parses."""
    records = summaries(directory)
    assert [s["status"] for s in records] == ["completed"] * jobs, statuses(directory)
    assert len({s["config_key"] for s in records}) == jobs
    results = pd.read_csv(directory / "results.csv")
    assert len(results) == jobs and results.config_key.is_unique and set(results.status) == {"completed"}
    for d in run_dirs(directory):
        for name in ("epochs.csv", "layers.csv"):
            assert len(pd.read_csv(d / name)) > 0
        assert yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
    assert not list(directory.rglob("*.tmp"))


@pytest.mark.slow
def test_killed_sweep_resumes_every_job_exactly_once(killed_batched_sweep, main, monkeypatch):
    d = killed_batched_sweep.dir
    stamps = killed_batched_sweep.result
    assert len(stamps) == 2, statuses(d / "S")
    monkeypatch.chdir(d)
    again = main(*["-m", *KILLED, "resume=true"])
    assert again.code == 0, again.err
    assert again.err.count("skipped: finished before") == 2
    check_complete(d / "S", 4)
    assert {r: (d / "S" / r / "summary.json").stat().st_mtime_ns for r in stamps} == stamps  # not re-run


@pytest.mark.slow
def test_ctrl_c_leaves_interrupted_records_exit_130_and_resume_completes(interrupted_batched_sweep, main, monkeypatch):
    d = interrupted_batched_sweep.dir
    code, out, err = interrupted_batched_sweep.result
    assert code == 130, f"{out}\n{err}"
    assert "deeprun: interrupted; records marked 'interrupted'" in err and "Traceback" not in err
    assert sorted(statuses(d / "S").values()) == ["interrupted", "interrupted"], statuses(d / "S")
    assert len(pd.read_csv(d / "S" / "results.csv")) == 2  # the table as the sweep ended

    monkeypatch.chdir(d)
    again = main(*["-m", *INTERRUPTED, "resume=true"])
    assert again.code == 0, again.err
    assert "skipped" not in again.err
    check_complete(d / "S", 4)


# --- submitit -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess  # submitit starts a process per task
def test_submitit_local_trains_each_group_as_one_task(main, tmp_path):
    p = main("-m", *TINY, "seed=0,1", "depth=1,2", "hydra.launcher.submitit=local", "hydra.sweep.dir=S")
    assert p.code == 0, p.err
    assert "Launching 4 jobs in 2 submitit local tasks" in p.out
    check_complete(tmp_path / "S", 4)
    tasks = [d for d in (tmp_path / "S" / ".submitit").iterdir() if d.name.isdigit()]
    assert len(tasks) == 2
    for i in range(4):
        assert f"deeprun: job {i} completed" in p.err


# --- the sweep helpers ------------------------------------------------------------------------


def test_add_results_replaces_rows_of_the_same_runs_in_one_write(tmp_path):
    for name, loss in [("0", 1.0), ("1_a", 2.0), ("10_b", 3.0)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": "completed", "loss": loss,
                                                                  "config_key": name}))
    sweep.add_results(tmp_path, [tmp_path / "10_b", tmp_path / "0"])
    (tmp_path / "0" / "summary.json").write_text(json.dumps({"status": "completed", "loss": 9.0, "config_key": "0"}))
    sweep.add_results(tmp_path, [tmp_path / "0", tmp_path / "1_a"])
    table = pd.read_csv(tmp_path / "results.csv", dtype={"run": str})
    assert list(table.run) == ["0", "1_a", "10_b"] and list(table.loss) == [9.0, 2.0, 3.0]
    assert set(sweep.finished_runs(tmp_path)) == {"0", "1_a", "10_b"}
    assert sweep.finished_run(tmp_path, "1_a")[0] == tmp_path / "1_a"
    assert config_key(OmegaConf.create({"a": 1})) == config_key(OmegaConf.create({"a": 1, "resume": True}))
