"""logger=tensorboard and logger=mlflow, read back with each library's own reader and held to the
records (docs/config.md, `logger`): every epoch's epochs.csv values at step = epoch, each logged
epoch's layers.csv values as `<column>/<layer name>` (NaN left out), the results row's config half
as hyper-parameters (HParams; MLflow params, nulls spelt `null`), its outcome numbers as
`summary/<column>` (`@` spelt `_at_`); a run per job, and in a sweep one MLflow parent run (tagged
with the sweep dir) with a child per job, whichever launcher ran them. logger=none writes nothing;
a missing package is one line naming the extra; a store that cannot be opened fails the run before it
trains; a logger failing later is one warning and the run goes on.

MLflow's SQLite store takes seconds to create: the module shares one, an experiment per test.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams.api_pb2 import Status  # noqa: E402
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402

import deeprun  # noqa: E402
from conftest import run_dirs, run_main, tiny  # noqa: E402
from deeprun import api, loggers  # noqa: E402
from deeprun.config import ConfigError  # noqa: E402
from deeprun.records import LAYER_COLUMNS, config_key  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "quiet_mlflow")
TINY = ["epochs=3", "depth=2", "width=4", "data.n=64", "log.progress=false", "device=cpu"]
EPOCH_SKIP = ("epoch", "seconds")


@pytest.fixture(scope="module", autouse=True)
def quiet_mlflow():
    """No usage reports from the tests (MLflow's telemetry would try the network)."""
    before = os.environ.get("MLFLOW_DISABLE_TELEMETRY")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    yield
    if before is None:
        os.environ.pop("MLFLOW_DISABLE_TELEMETRY", None)
    else:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = before


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module, created once."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def mlflow_args(store, request) -> list[str]:
    """logger=mlflow into the module's store, in an experiment of this test's own."""
    return ["logger=mlflow", f"logger.tracking_uri={store}", f"logger.experiment={request.node.name}"]


@pytest.fixture
def runs(store, request):
    """runs(): this test's MLflow runs, oldest first."""
    client = MlflowClient(store)

    def get():
        experiment = client.get_experiment_by_name(request.node.name)
        return [] if experiment is None else client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return get


@pytest.fixture
def main(monkeypatch, capsys, tmp_path):
    """main(*args): `deeprun ARGS` in this process, in tmp_path; (exit status, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str]:
        code = run_main(monkeypatch, *args)
        return code, capsys.readouterr().err
    return run


def records(out: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """summary.json, epochs.csv, layers.csv (pandas reads its floats back exactly as it wrote them)."""
    summary = json.loads((out / "summary.json").read_text())
    return summary, pd.read_csv(out / "epochs.csv"), pd.read_csv(out / "layers.csv")


def config_half(summary: dict) -> dict:
    keys = list(summary)
    return {k: summary[k] for k in keys[:keys.index("status")]}


def expected_series(epochs: pd.DataFrame, layers: pd.DataFrame) -> dict[str, tuple[list[int], np.ndarray]]:
    """name -> (steps, values) every logger writes, from the records: NaN left out."""
    series = {}
    for column in epochs.columns:
        if column not in EPOCH_SKIP:
            kept = epochs[["epoch", column]].dropna()
            series[column] = (kept.epoch.tolist(), kept[column].to_numpy())
    for name in layers.name.unique():
        rows = layers[layers.name == name]
        for column in LAYER_COLUMNS:
            kept = rows[["epoch", column]].dropna()
            if len(kept):
                series[f"{column}/{name}"] = (kept.epoch.tolist(), kept[column].to_numpy())
    return series


def summary_numbers(summary: dict) -> dict[str, float]:
    keys = list(summary)
    return {f"summary/{k.replace('@', '_at_')}": float(summary[k]) for k in keys[keys.index("status") + 1:]
            if isinstance(summary[k], (int, float)) and not isinstance(summary[k], bool)}


def mlflow_param(value) -> str:
    return "null" if value is None else ("true" if value else "false") if isinstance(value, bool) else str(value)


# --- TensorBoard ----------------------------------------------------------------------------------


def tensorboard_events(directory: Path) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return events


def test_tensorboard_scalars_and_hparams_are_the_records(tmp_path):
    out = tmp_path / "run"
    # tanh: saturated_frac, no dead_frac; log.every=2 of 5 epochs: layers at 0, 2, 4, 5
    api.run(tiny(*TINY, "logger=tensorboard", "epochs=5", "log.every=2", "act=tanh"), out_dir=out)
    summary, epochs, layers = records(out)
    assert sorted(p.name for p in out.iterdir()) == ["epochs.csv", "layers.csv", "summary.json", "tensorboard"]
    events = tensorboard_events(out / "tensorboard")
    expected = expected_series(epochs, layers)
    numbers = summary_numbers(summary)
    assert set(events.Tags()["scalars"]) == set(expected) | set(numbers)
    assert "dead_frac/fc0" not in expected and "saturated_frac/fc0" in expected and "act_std/head" not in expected
    assert expected["grad_norm/fc0"][0] == [0, 2, 4, 5] and expected["train_loss"][0] == [0, 1, 2, 3, 4, 5]
    for tag, (steps, values) in expected.items():
        got = events.Scalars(tag)
        assert [s.step for s in got] == steps, tag
        np.testing.assert_array_equal(np.float32([s.value for s in got]), values.astype(np.float32), err_msg=tag)
    for tag, value in numbers.items():
        (got,) = events.Scalars(tag)
        assert (got.step, np.float32(got.value)) == (5, np.float32(value)), tag

    content = events.PluginTagToContent("hparams")
    hparams = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    config = {k: v for k, v in config_half(summary).items() if v is not None}
    assert set(hparams) == set(config) and {"depth", "act", "lr", "config_key", "optimizer.betas"} <= set(hparams)
    for key, value in config.items():
        if isinstance(value, str):
            assert hparams[key].string_value == value, key
        else:
            assert hparams[key].number_value == float(value), key
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == set(numbers)
    end = HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == Status.Value("STATUS_SUCCESS")


def test_each_member_of_a_stack_logs_to_its_own_run(tmp_path):
    cfgs = [tiny(*TINY, "logger=tensorboard", f"seed={s}") for s in (0, 1)]
    outs = [tmp_path / "a", tmp_path / "b"]
    summaries = api.run_group(cfgs, outs)
    assert [s["stack_size"] for s in summaries] == [2, 2]
    losses = []
    for out in outs:
        _, epochs, _ = records(out)
        got = [s.value for s in tensorboard_events(out / "tensorboard").Scalars("train_loss")]
        np.testing.assert_array_equal(np.float32(got), epochs.train_loss.to_numpy(np.float32))
        losses.append(got)
    assert losses[0] != losses[1]


def test_logger_dir_is_a_root_each_run_writes_below(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    api.run(tiny(*TINY, "logger=tensorboard", "logger.dir=tb"), out_dir="outputs/runs/r1")
    assert not (tmp_path / "outputs" / "runs" / "r1" / "tensorboard").exists()
    (events,) = (tmp_path / "tb" / "outputs" / "runs" / "r1").glob("events.out.tfevents.*")
    assert tensorboard_events(events.parent).Scalars("train_loss")


# --- MLflow -------------------------------------------------------------------------------------------


def check_mlflow_run(client: MlflowClient, run, out: Path) -> None:
    """The run's metrics, params and tags are the records of `out`."""
    summary, epochs, layers = records(out)
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: mlflow_param(v) for k, v in config_half(summary).items()}
    tags = run.data.tags
    assert (tags["deeprun.run_dir"], tags["deeprun.config_key"], tags["deeprun.status"]) == \
        (str(out.resolve()), summary["config_key"], summary["status"])
    assert tags["deeprun.verdict_at_init"] == summary["verdict@init"]
    expected = expected_series(epochs, layers)
    numbers = summary_numbers(summary)
    assert set(run.data.metrics) == set(expected) | set(numbers)
    for name, (steps, values) in expected.items():
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == steps, name
        if name.split("/")[0] in LAYER_COLUMNS:  # layers.csv holds float32, as measured
            np.testing.assert_array_equal(np.float32([m.value for m in history]), values.astype(np.float32), name)
        else:
            np.testing.assert_array_equal([m.value for m in history], values, name)
    last = int(epochs.epoch.iloc[-1])
    for name, value in numbers.items():
        (m,) = client.get_metric_history(run.info.run_id, name)
        assert (m.step, m.value) == (last, value), name


@pytest.mark.slow  # the module's MLflow store takes seconds to create
def test_mlflow_metrics_params_and_tags_are_the_records(tmp_path, store, mlflow_args, runs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    api.run(tiny(*TINY, *mlflow_args, "epochs=5", "log.every=2"), out_dir="outputs/runs/one")
    (run,) = runs()
    assert run.info.run_name == "outputs/runs/one" and "mlflow.parentRunId" not in run.data.tags
    params = run.data.params
    assert (params["depth"], params["lr"], params["batch_size"], params["optimizer.betas"]) == \
        ("2", "0.001", "null", "[0.9, 0.999]")
    check_mlflow_run(MlflowClient(store), run, tmp_path / "outputs" / "runs" / "one")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["epochs.csv", "layers.csv", "summary.json"]


@pytest.mark.slow
def test_a_batched_sweep_is_one_parent_with_a_child_per_job_found_again_by_its_tag(
        main, store, mlflow_args, runs, tmp_path, monkeypatch):
    code, err = main("-m", *TINY, "seed=0,1,2", "hydra.sweep.dir=S", *mlflow_args)
    assert code == 0, err
    jobs = run_dirs(tmp_path / "S")
    assert [json.loads((j / "summary.json").read_text())["stack_size"] for j in jobs] == [3, 3, 3]  # one stack
    # resume in another process: it knows no parent, and finds the sweep's by its tag
    monkeypatch.setattr(loggers, "_PARENTS", {})
    code, err = main("-m", *TINY, "seed=0,1,2,3", "hydra.sweep.dir=S", "resume=true", *mlflow_args)
    assert code == 0, err
    assert err.count("skipped: finished before") == 3

    parents = [r for r in runs() if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs() if "mlflow.parentRunId" in r.data.tags]
    (parent,) = parents
    assert parent.data.tags["deeprun.sweep_dir"] == str((tmp_path / "S").resolve())
    assert parent.info.run_name == "S" and parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    jobs = {j.name: j for j in run_dirs(tmp_path / "S")}
    assert sorted(c.info.run_name for c in children) == sorted(jobs) and len(jobs) == 4
    client = MlflowClient(store)
    for child in children:
        check_mlflow_run(client, child, jobs[child.info.run_name])


@pytest.mark.slow
def test_the_basic_launcher_runs_one_job_after_another_under_one_parent(main, mlflow_args, runs, tmp_path):
    code, err = main("-m", *TINY, "seed=0,1", "hydra.sweep.dir=A", "hydra/launcher=basic", *mlflow_args)
    assert code == 0, err
    (parent,) = [r for r in runs() if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs() if "mlflow.parentRunId" in r.data.tags]
    assert parent.data.tags["deeprun.sweep_dir"] == str((tmp_path / "A").resolve())
    assert sorted(c.info.run_name for c in children) == sorted(j.name for j in run_dirs(tmp_path / "A"))
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)


@pytest.mark.slow  # the module's MLflow store takes seconds to create
def test_a_logger_failing_mid_run_is_one_warning_and_the_run_goes_on(tmp_path, mlflow_args, runs, monkeypatch, capsys):
    def fail(self, steps):
        raise RuntimeError("disk on fire\nsecond line")
    monkeypatch.setattr(loggers.MLflow, "_write", fail)
    result = api.run(tiny(*TINY, *mlflow_args), out_dir=tmp_path / "run")
    assert result.summary["status"] == "completed" and len(result.epochs) == 4
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"deeprun: warning: logger=mlflow stopped logging ({(tmp_path / 'run').resolve()}): "
                     f"RuntimeError: disk on fire; the run's own records are whole"]
    (run,) = runs()
    assert run.info.status == "FAILED"


@pytest.mark.slow  # the module's MLflow store takes seconds to create
def test_a_ctrl_c_logs_the_unsynced_epochs_and_ends_the_run_killed(tmp_path, store, mlflow_args, runs, monkeypatch):
    from deeprun import train

    calls, real = [], train.evaluate

    def evaluate(*args, **kwargs):  # Ctrl-C in epoch 3, after epochs 1 and 2 that wait for the sync of epoch 4
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        api.run(tiny(*TINY, *mlflow_args, "epochs=5", "log.every=4"), out_dir=tmp_path / "run")
    summary, epochs, _ = records(tmp_path / "run")
    assert summary["status"] == "interrupted" and epochs.epoch.tolist() == [0, 1, 2]
    (run,) = runs()
    assert (run.info.status, run.data.tags["deeprun.status"]) == ("KILLED", "interrupted")
    history = MlflowClient(store).get_metric_history(run.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == list(zip(epochs.epoch, epochs.train_loss))


# --- what a logger must not change, and its errors ------------------------------------------------------


def test_logger_none_writes_nothing_else_and_no_logger_changes_config_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    api.run(tiny(*TINY), out_dir="run")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == \
        ["run", "run/epochs.csv", "run/layers.csv", "run/summary.json"]
    keys = {config_key(tiny(*TINY, *extra)) for extra in
            ([], ["logger=tensorboard", "logger.dir=tb"], ["logger=mlflow", "logger.tracking_uri=sqlite:///x.db"])}
    assert len(keys) == 1


def test_a_job_is_a_sweeps_by_hydra_or_by_its_own_hydra_yaml(tmp_path):
    """A batched launcher's submitit task has no HydraConfig: the job's .hydra/hydra.yaml says multirun."""
    job = tmp_path / "S" / "0_seed=0"
    (job / ".hydra").mkdir(parents=True)
    assert loggers.sweep_dir(job) is None
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  run:\n    dir: x\n  mode: RUN\n")
    assert loggers.sweep_dir(job) is None
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  run:\n    dir: x\n  mode: MULTIRUN\n")
    assert loggers.sweep_dir(job) == tmp_path / "S"


@pytest.mark.parametrize("name", ["mlflow", "tensorboard"])
def test_a_missing_package_is_one_line_naming_the_extra(name, main, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it fails, find_spec finds none
    line = f"logger={name} needs {name}, which is not installed; pip install 'deeprun[{name}]'"
    with pytest.raises(ConfigError) as e:
        deeprun.compose([f"logger={name}"])
    assert str(e.value) == line
    code, err = main(*TINY, f"logger={name}")
    assert (code, err.strip().splitlines()) == (2, [f"deeprun: error: {line}"])
    assert not list(tmp_path.rglob("summary.json"))


def test_a_store_that_cannot_be_opened_fails_the_run_before_it_trains(tmp_path, main):
    with pytest.raises(ConfigError) as e:
        api.run(tiny(*TINY, "logger=mlflow", "logger.tracking_uri=nosuch://x"), out_dir=tmp_path / "run")
    assert str(e.value).startswith("logger=mlflow: cannot open logger.tracking_uri=nosuch://x: ")
    assert "\n" not in str(e.value)
    summary, epochs, _ = records(tmp_path / "run")
    assert summary["status"] == "failed" and len(epochs) == 0  # not one epoch trained
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^logger=tensorboard: cannot open logger.dir=.*file/tb: "):
        api.run(tiny(*TINY, "logger=tensorboard", f"logger.dir={tmp_path / 'file' / 'tb'}"), out_dir=tmp_path / "run2")

    shutil.rmtree(tmp_path / "run")
    code, err = main(*TINY, "logger=mlflow", "logger.tracking_uri=nosuch://x", "hydra.run.dir=cli")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("deeprun: error: logger=mlflow: cannot open "), err
    assert not (tmp_path / "cli").exists()  # the run never started: nothing of it is left


# --- through the command line ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cli_sweep_logs_to_the_default_store_beside_the_outputs(tmp_path, main, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):  # the defaults: outputs/mlflow.db, deeprun
        monkeypatch.delenv(var, raising=False)
    code, err = main("-m", *TINY, "seed=0,1", "logger=mlflow")
    assert code == 0, err
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").iterdir()
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("deeprun")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["deeprun.sweep_dir"] == str(sweep_dir.resolve())
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    jobs = {j.name: j for j in run_dirs(sweep_dir)}
    assert sorted(c.info.run_name for c in children) == sorted(jobs) and len(jobs) == 2
    for child in children:
        check_mlflow_run(client, child, jobs[child.info.run_name])
