"""`deeprun` as a user runs it: a command in a fresh directory, then the records it leaves.

Each command costs a torch import (seconds), so the commands are background jobs (conftest.background):
they start with the session, beside the in-process tests, and the tests here read their results at
the end. Each command gets one torch thread (OMP_NUM_THREADS=1): they share the cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, background, output, run_cli, run_dirs, run_program, run_python, start_cli

WIDE = {"COLUMNS": "400"}  # rich wraps the summary table at the terminal width; keep paths on one line
TINY_MLP = ["epochs=3", "depth=2", "width=8", "data.n=64"]
SUMMARY_COLUMNS = ["model", "depth", "width", "act", "init", "norm", "optimizer", "lr", "batch_size", "epochs", "data",
                   "seed", "device", "params", "status", "final_train_loss", "final_val_loss", "best_val_loss", "val_r2",
                   "grad_norm_first", "grad_norm_last", "grad_ratio", "dead_frac_max", "saturated_frac_max", "seconds",
                   "error"]
EPOCH_COLUMNS = ["epoch", "train_loss", "val_loss", "val_r2", "val_rmse", "lr", "seconds"]
LAYER_COLUMNS = ["epoch", "layer", "name", "grad_norm", "weight_norm", "update_ratio", "act_mean", "act_std",
                 "dead_frac", "saturated_frac"]
GROUPS = ("act", "data", "device", "init", "model", "norm", "optimizer", "scheduler")
HAS_GPU = os.path.exists("/dev/nvidiactl")  # device=auto may pick cuda there


def mlp_params(sizes: list[int]) -> int:
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# --- the module's commands, in the background -------------------------------------------------------------


@background
def resnet_run(d: Path):
    return run_cli("model=resnet", "depth=100", "act=leaky_relu", "epochs=1", "width=8", "data.n=64",
                   "log.progress=false", cwd=d)


HOUSES = 80  # rows of houses.csv; data.val_fraction 0.2 -> 16 validation rows


def write_houses(path: Path) -> None:
    """area, rooms -> price (float), rent (float), kind (3 strings), flag (0/1), grade (ints 0..4)."""
    rng = np.random.default_rng(0)
    area = rng.uniform(50, 200, HOUSES).round(1)
    rooms = rng.integers(1, 6, HOUSES)
    price = 3 * area + 20 * rooms + rng.normal(0, 5, HOUSES)
    pd.DataFrame({
        "area": area, "rooms": rooms, "price": price.round(2), "rent": (0.01 * price + rng.normal(0, 0.1, HOUSES)).round(3),
        "kind": np.array(["flat", "house", "villa"])[np.arange(HOUSES) % 3],
        "flag": (area > 120).astype(int), "grade": rng.integers(0, 5, HOUSES),
    }).to_csv(path, index=False)


@background
def csv_sweep(d: Path):
    """One sweep over the target column: first a column the file lacks (the job fails, the sweep goes on),
    then a float, 3 strings, 0/1 ints, two floats."""
    write_houses(d / "houses.csv")
    return run_cli("-m", "data=csv", "data.path=houses.csv", "data.features=[area,rooms]",
                   "data.target=nope,price,kind,flag,[price,rent]", "epochs=2", "depth=2", "width=8",
                   "log.progress=false", cwd=d)


@background
def multirun(d: Path):
    return run_cli("-m", "act=relu,tanh", "epochs=2", "depth=2", "width=8", "data.n=64", "log.progress=false", cwd=d)


@background
def wheel(d: Path):
    """Build the wheel, install it with --target, import it from elsewhere. Returns {step: CompletedProcess}."""
    steps = {}
    # hatchling installed here already: build without fetching it from an index
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    steps["build"] = run_program(*pip, "wheel", "--no-deps", *isolation, "-w", d / "dist", ROOT, timeout=300)
    wheels = sorted((d / "dist").glob("deeprun-*.whl"))
    if steps["build"].returncode or not wheels:
        return steps
    steps["install"] = run_program(*pip, "install", "--no-deps", "--target", d / "site", wheels[0], timeout=300)
    elsewhere = d / "elsewhere"
    elsewhere.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(d / 'site')!r})\n"
            "import deeprun, deeprun.config as c\n"
            "print(deeprun.__file__); print(c.conf_dir()); print(c.compose(['depth=5', 'act=tanh']).depth)")
    steps["import"] = run_python(code, cwd=elsewhere)
    return steps


@background
def default_run(d: Path):
    return run_cli(*TINY_MLP, "log.loss_at=[1,3,200]", cwd=d, env=WIDE)


@background
def csv_forced_regression(d: Path):
    """Integer target with few values: auto would say classes; data.task=regression says numbers."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 2))
    grade = np.clip(np.round(x[:, 0] + x[:, 1] + 2), 0, 4).astype(int)
    pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "grade": grade}).to_csv(d / "grades.csv", index=False)
    return run_cli("data=csv", "data.path=grades.csv", "data.target=grade", "data.task=regression",
                   "epochs=2", "depth=2", "width=8", "log.progress=false", cwd=d)


@background
def help_run(d: Path):
    """`deeprun --help` as the console script runs it (main()), reporting whether torch got imported."""
    code = ("import sys\n"
            "sys.argv = ['deeprun', '--help']\n"
            "import deeprun.cli as c\n"
            "try:\n    c.main()\n    code = 0\n"
            "except SystemExit as e:\n    code = e.code or 0\n"
            "print('EXIT', code, 'TORCH', 'torch' in sys.modules)\n")
    return run_python(code, cwd=d)


@background
def ctrl_c_run(d: Path):
    """A long run, sent SIGINT once it trains: (exit status, stdout, stderr)."""
    proc = start_cli("epochs=1000000", "log.every=50", "log.progress=false", "data.n=64", "save.checkpoints=[init]",
                     cwd=d)
    deadline = time.monotonic() + 60
    # init.pt is written once the model is built, just before training: from then on epochs come
    # (summary.json comes earlier, before data, model and device are set up: seconds on a GPU machine)
    while time.monotonic() < deadline and proc.poll() is None and not any(
            r.joinpath("init.pt").exists() for r in (d / "outputs" / "runs").glob("*/*")):
        time.sleep(0.2)
    time.sleep(6)  # past the first optimiser (torch imports its compiler then: 2 s here, 4 on a GPU machine)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


# --- 1. the default experiment ------------------------------------------------------------


@pytest.fixture(scope="module")
def default_records(default_run):
    p = default_run.proc
    assert p.returncode == 0, output(p)
    dirs = run_dirs(default_run.dir / "outputs" / "runs")
    assert len(dirs) == 1, dirs
    d = dirs[0]
    return d, read_summary(d), pd.read_csv(d / "epochs.csv"), pd.read_csv(d / "layers.csv")


def test_default_run_prints_summary_table(default_run, default_records):
    run_dir = default_records[0]
    out = default_run.proc.stdout
    assert "status" in out and "completed" in out, output(default_run.proc)
    assert str(run_dir.resolve()) in out, output(default_run.proc)
    assert "Traceback" not in default_run.proc.stderr


def test_default_run_records_composed_config(default_records):
    run_dir = default_records[0]
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert (config["depth"], config["width"], config["epochs"]) == (2, 8, 3)
    assert config["data"]["n"] == 64
    assert config["act"]["name"] == "relu" and config["init"]["name"] == "auto"
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert "depth=2" in overrides


def test_default_run_summary(default_records):
    _, s, epochs, layers = default_records
    missing = [c for c in SUMMARY_COLUMNS if c not in s]
    assert not missing, f"summary.json lacks {missing}"
    assert s["status"] == "completed" and s["error"] is None
    assert (s["model"], s["depth"], s["width"], s["act"], s["norm"], s["optimizer"]) == ("mlp", 2, 8, "relu", "none", "adam")
    assert s["init"] == "kaiming_normal"  # init=auto with relu, recorded as what it picked
    assert (s["epochs"], s["lr"], s["batch_size"], s["data"], s["seed"]) == (3, 0.001, None, "regression", 0)
    assert s["device"] in (("cpu", "cuda") if HAS_GPU else ("cpu",))
    assert s["params"] == mlp_params([3, 8, 8, 1]) == 113
    assert s["seconds"] > 0

    # the outcome half agrees with the per-epoch and per-layer records
    last = epochs.iloc[-1]
    assert s["final_train_loss"] == pytest.approx(last.train_loss, rel=1e-6)
    assert s["final_val_loss"] == pytest.approx(last.val_loss, rel=1e-6)
    assert s["best_val_loss"] == pytest.approx(epochs[epochs.epoch >= 1].val_loss.min(), rel=1e-6)
    assert s["val_r2"] == pytest.approx(last.val_r2, rel=1e-6)
    assert s["loss@1"] == pytest.approx(epochs.set_index("epoch").train_loss[1], rel=1e-6)
    assert s["loss@3"] == pytest.approx(epochs.set_index("epoch").train_loss[3], rel=1e-6)
    assert "loss@200" not in s  # the run is not that long
    final = layers[layers.epoch == 3].set_index("name")
    assert s["grad_norm_first"] == pytest.approx(final.grad_norm["fc0"], rel=1e-6)
    assert s["grad_norm_last"] == pytest.approx(final.grad_norm["fc1"], rel=1e-6)  # last hidden, before the head
    assert s["grad_ratio"] == pytest.approx(s["grad_norm_first"] / s["grad_norm_last"], rel=1e-6)
    assert s["dead_frac_max"] == pytest.approx(final.dead_frac.max(), rel=1e-6)
    assert s["saturated_frac_max"] is None  # relu has no flat tails: recorded as null, not a number


def test_default_run_epochs_csv(default_records):
    epochs = default_records[2]
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert epochs.epoch.tolist() == [0, 1, 2, 3]
    assert np.isfinite(epochs[["train_loss", "val_loss", "val_r2"]].to_numpy()).all()
    assert (epochs.train_loss > 0).all() and (epochs.val_loss > 0).all()
    assert (epochs.val_r2 <= 1).all()
    assert epochs.lr.tolist() == [0.001] * 4
    assert (epochs.seconds >= 0).all() and (epochs.seconds[epochs.epoch >= 1] > 0).all()  # a trained epoch takes time


def test_default_run_layers_csv(default_records):
    layers = default_records[3]
    assert list(layers.columns) == LAYER_COLUMNS
    assert len(layers) == 4 * 3  # logged epochs 0..3 x (fc0, fc1, head)
    for epoch, rows in layers.groupby("epoch"):
        assert rows.layer.tolist() == [0, 1, 2] and rows.name.tolist() == ["fc0", "fc1", "head"]
    assert sorted(layers.epoch.unique()) == [0, 1, 2, 3]
    assert np.isfinite(layers[["grad_norm", "weight_norm"]].to_numpy()).all()
    assert (layers.weight_norm > 0).all()
    assert layers[layers.epoch == 0].update_ratio.isna().all()  # nothing updated at initialisation
    trained = layers[layers.epoch >= 1]
    assert (trained.update_ratio > 0).all() and np.isfinite(trained.update_ratio).all()
    hidden = layers[layers.name != "head"]
    assert hidden.dead_frac.between(0, 1).all()  # relu: a share of units
    assert hidden.saturated_frac.isna().all()  # relu: no flat tails to measure
    assert (hidden.act_mean >= 0).all()  # relu outputs are >= 0
    assert (hidden.act_std[hidden.dead_frac < 1] > 0).all()  # a layer with a unit alive: outputs that vary
    assert layers[layers.name == "head"][["act_mean", "act_std", "dead_frac"]].isna().all().all()  # no activation


# --- 2. the residual-network notebook's fix: a 100-block residual net ---------------------------


@pytest.mark.slow
def test_resnet_depth_100(resnet_run):
    p = resnet_run.proc
    assert p.returncode == 0, output(p)
    (d,) = run_dirs(resnet_run.dir / "outputs" / "runs")
    s = read_summary(d)
    assert s["status"] == "completed"
    assert (s["model"], s["depth"], s["act"], s["init"], s["norm"]) == ("resnet", 100, "leaky_relu", "kaiming_normal", "batch")
    block = 2 * (8 * 8) + 2 * (2 * 8)  # two Linear(8, 8), both feeding BatchNorm (no bias), and two BatchNorm1d(8)
    assert s["params"] == (3 * 8 + 8) + 100 * block + (8 + 1)
    layers = pd.read_csv(d / "layers.csv")
    expected = ["stem", *(f"blocks.{i}.f.fc{j}" for i in range(100) for j in (1, 2)), "head"]
    assert len(expected) == 202
    assert sorted(layers.epoch.unique()) == [0, 1]
    for epoch, rows in layers.groupby("epoch"):
        assert rows.name.tolist() == expected
        assert rows.layer.tolist() == list(range(202))
    assert np.isfinite(layers.grad_norm.to_numpy()).all()
    assert (layers.grad_norm > 0).all()


# --- 3. the user's CSV table --------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_runs(csv_sweep) -> dict[str, tuple[dict, pd.DataFrame]]:
    """data.target -> (summary, epochs) of each job of the sweep that trained."""
    p = csv_sweep.proc
    assert p.returncode == 1, output(p)  # job 0 (data.target=nope) failed, by design
    runs = {}
    for d in run_dirs(csv_sweep.dir / "outputs" / "sweeps"):
        s = read_summary(d)
        if s["data.target"] != "nope":
            runs[s["data.target"]] = (s, pd.read_csv(d / "epochs.csv"))
    assert set(runs) == {"price", "kind", "flag", json.dumps(["price", "rent"])}, list(runs)
    return runs


def _check_accuracy(epochs: pd.DataFrame) -> None:
    acc = epochs.val_accuracy.to_numpy()
    assert ((acc >= 0) & (acc <= 1)).all()
    n_val = round(HOUSES * 0.2)
    assert np.allclose(acc * n_val, np.round(acc * n_val), atol=1e-4), acc  # a share of the 16 validation rows


@pytest.mark.slow
def test_csv_float_target_is_regression(csv_runs):
    s, epochs = csv_runs["price"]
    assert s["status"] == "completed" and s["task"] == "regression" and s["data"] == "csv"
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert np.isfinite(epochs.val_r2).all() and (epochs.val_r2 <= 1).all()
    assert s["val_r2"] == pytest.approx(epochs.val_r2.iloc[-1], rel=1e-6)
    assert s["params"] == mlp_params([2, 8, 8, 1])


@pytest.mark.slow
def test_csv_string_target_is_multiclass(csv_runs):
    s, epochs = csv_runs["kind"]
    assert s["status"] == "completed" and s["task"] == "multiclass"
    assert list(epochs.columns) == ["epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"]
    assert "val_accuracy" in s and "val_r2" not in s
    assert s["params"] == mlp_params([2, 8, 8, 3])  # one logit per class
    _check_accuracy(epochs)
    assert np.isfinite(epochs.train_loss).all() and (epochs.train_loss > 0).all()  # cross-entropy


@pytest.mark.slow
def test_csv_zero_one_target_is_binary(csv_runs):
    s, epochs = csv_runs["flag"]
    assert s["status"] == "completed" and s["task"] == "binary"
    assert "val_accuracy" in epochs.columns
    assert s["params"] == mlp_params([2, 8, 8, 1])  # one logit
    _check_accuracy(epochs)


@pytest.mark.slow
def test_csv_two_targets_is_regression_with_two_outputs(csv_runs):
    s, epochs = csv_runs[json.dumps(["price", "rent"])]
    assert s["status"] == "completed" and s["task"] == "regression"
    assert "val_r2" in epochs.columns
    assert s["params"] == mlp_params([2, 8, 8, 2])


@pytest.mark.slow
def test_csv_task_regression_overrides_integer_target(csv_forced_regression):
    p = csv_forced_regression.proc
    assert p.returncode == 0, output(p)
    (d,) = run_dirs(csv_forced_regression.dir / "outputs" / "runs")
    s = read_summary(d)
    assert s["status"] == "completed" and s["task"] == "regression"
    assert s["params"] == mlp_params([2, 8, 8, 1])  # features default to every other column: x1, x2
    assert "val_r2" in pd.read_csv(d / "epochs.csv").columns


@pytest.mark.slow
def test_csv_run_prints_no_warnings(csv_forced_regression):
    """With log.progress=false a clean run writes nothing on stderr (no library warnings)."""
    err = csv_forced_regression.proc.stderr
    assert "Warning" not in err, err


# --- 4. the installed package ----------------------------------------------------------------


@pytest.mark.slow
def test_wheel_ships_conf_and_works_from_any_directory(wheel):
    steps = wheel.proc
    assert steps["build"].returncode == 0, output(steps["build"])
    (whl,) = sorted((wheel.dir / "dist").glob("deeprun-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    assert "deeprun/conf/config.yaml" in names
    for group in GROUPS:
        for option in (ROOT / "conf" / group).glob("*.yaml"):
            assert f"deeprun/conf/{group}/{option.name}" in names, f"{group}/{option.name} not in the wheel"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "deeprun = deeprun.cli:main" in zipfile.ZipFile(whl).read(entry_points).decode()

    assert steps["install"].returncode == 0, output(steps["install"])
    p = steps["import"]
    assert p.returncode == 0, output(p)
    module_file, conf, depth = p.stdout.split()
    site = (wheel.dir / "site").resolve()
    assert Path(module_file).resolve().is_relative_to(site)
    assert Path(conf).resolve() == site / "deeprun" / "conf"
    assert depth == "5"


# --- 5, 6. --help and --cfg job ------------------------------------------------------------


def test_help_lists_groups_without_importing_torch(help_run):
    p = help_run.proc
    assert p.returncode == 0, output(p)
    lines = p.stdout.splitlines()
    assert lines[-1] == "EXIT 0 TORCH False", output(p)  # exit status 0, torch never loaded
    for group in GROUPS:
        assert any(line.startswith(f"{group}: ") for line in lines), f"group {group} not in --help"
    act_line = next(line for line in lines if line.startswith("act: "))
    assert {"relu", "leaky_relu", "tanh", "sigmoid", "selu"} <= set(act_line[5:].split(", "))
    model_line = next(line for line in lines if line.startswith("model: "))
    assert {"mlp", "resnet", "cnn", "resnet_cnn", "custom"} <= set(model_line[7:].split(", "))
    assert "depth: 3" in lines  # the default config follows the groups
    assert "Traceback" not in p.stderr


def test_cfg_job_prints_config_without_training(main, tmp_path):
    p = main("--cfg", "job", "depth=5")  # in this process: only the composed config is needed
    assert p.code == 0, p.err
    config = yaml.safe_load(p.out)
    assert config["depth"] == 5
    assert config["model"]["name"] == "mlp" and config["act"]["name"] == "relu"
    assert run_dirs(tmp_path) == []  # nothing trained, nothing recorded


# --- 7. multirun ------------------------------------------------------------------------------


@pytest.mark.slow
def test_multirun_leaves_one_record_per_job(multirun):
    p = multirun.proc
    assert p.returncode == 0, output(p)
    sweeps = multirun.dir / "outputs" / "sweeps"
    dirs = run_dirs(sweeps)
    assert len(dirs) == 2, dirs
    names = sorted(d.relative_to(sweeps).parts[1] for d in dirs)  # <stamp>/<job number>_<overrides>
    assert names == ["0_act=relu,data.n=64,depth=2,epochs=2,width=8", "1_act=tanh,data.n=64,depth=2,epochs=2,width=8"]
    assert len({d.parent for d in dirs}) == 1  # one sweep directory
    summaries = {s["act"]: s for s in map(read_summary, dirs)}
    assert set(summaries) == {"relu", "tanh"}
    assert all(s["status"] == "completed" and s["epochs"] == 2 for s in summaries.values())
    assert summaries["relu"]["init"] == "kaiming_normal" and summaries["tanh"]["init"] == "xavier_uniform"
    assert summaries["tanh"]["dead_frac_max"] is None and 0 <= summaries["tanh"]["saturated_frac_max"] <= 1
    assert summaries["relu"]["saturated_frac_max"] is None and 0 <= summaries["relu"]["dead_frac_max"] <= 1
    for d in dirs:
        assert len(pd.read_csv(d / "epochs.csv")) == 3  # epochs 0, 1, 2


@pytest.mark.slow
def test_sweep_goes_on_after_a_failed_job(csv_sweep):
    """DESIGN: an exception in one job of a sweep is recorded as failed with its message, and the sweep goes on."""
    p = csv_sweep.proc
    assert "Traceback" not in p.stdout + p.stderr, output(p)
    assert p.returncode == 1, output(p)  # the sweep ran to its end, and says a job failed
    dirs = {read_summary(d)["data.target"]: d for d in run_dirs(csv_sweep.dir / "outputs" / "sweeps")}
    summaries = {target: read_summary(d) for target, d in dirs.items()}
    assert summaries.get("nope", {}).get("status") == "failed", output(p)
    assert dirs["nope"].name.startswith("0_") and dirs["price"].name.startswith("1_")  # failed first, then went on
    assert "nope" in summaries["nope"]["error"]
    assert summaries.get("price", {}).get("status") == "completed", f"the second job did not run\n{output(p)}"


# --- Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_leaves_an_interrupted_record(ctrl_c_run):
    """SIGINT mid-run: exit 130, and records that parse, marked interrupted, with the epochs done so far."""
    code, out, err = ctrl_c_run.result
    assert code == 130, f"exit {code}\n{out}\n{err}"
    assert "interrupted" in err and "Traceback" not in err
    (d,) = run_dirs(ctrl_c_run.dir / "outputs" / "runs")
    s = read_summary(d)
    assert s["status"] == "interrupted" and s["error"] == "KeyboardInterrupt"
    epochs = pd.read_csv(d / "epochs.csv")
    assert len(epochs) >= 1 and list(epochs.epoch) == list(range(len(epochs)))
    assert s["final_train_loss"] == pytest.approx(epochs.train_loss.iloc[-1])
    assert not list(d.glob(".*.tmp"))
