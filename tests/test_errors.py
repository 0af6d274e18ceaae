"""A user's mistake ends in one line on stderr, `deeprun: error: ...` naming the key or file, exit status 2.

Each case runs in a fresh directory holding the CSV files it needs, in this process (``deeprun.cli.main()``,
the function the console script calls, with the case's argv); the fast tier runs the ``script`` cases,
a few of each kind, and leaves the rest to the whole suite (marked ``exhaustive``). Two checks need
processes of their own (background jobs, the whole suite only): mistakes deeprun must catch before
torch loads (``early``: Hydra's composition and deeprun's own checks) run one after another in a fresh
interpreter (the batch driver), which reports whether each of them imported torch; and the ``script``
cases run as the `deeprun` console script, each in its own process, as a check on the in-process shortcut.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from hydra.errors import HydraException
from omegaconf.errors import ConfigKeyError

import deeprun
from conftest import DEEPRUN, background, compose, run_cli, run_main, run_program, run_python
from deeprun.cli import one_line

BASE = ["epochs=1", "log.progress=false"]  # cases come after, so they win; a case that wrongly trains stays short
HAS_GPU = os.path.exists("/dev/nvidiactl")

CSV = {
    "ok.csv": "area,rooms,price\n50,1,100\n60,2,130\n70,3,160\n80,2,170\n",
    "blank.csv": "",
    "cities.csv": "area,city,price\n50,Oslo,100\n60,Bergen,130\n70,Oslo,160\n80,Bergen,170\n",
    "holes.csv": "area,rooms,price\n50,1,100\n60,2,130\n70,,160\n80,2,170\n",
    "cheap.csv": "area,rooms,label\n50,1,cheap\n60,2,cheap\n70,3,cheap\n80,2,cheap\n",
    "pixels.csv": "p0,p1,p2,p3,label\n0,1,2,3,a\n3,2,1,0,b\n1,1,2,2,a\n2,2,1,1,b\n",
    "my_nets.py": "from torch import nn\n\nclass Funnel(nn.Sequential):\n"
                  "    def __init__(self, n_in, n_out, hidden=4):\n"
                  "        super().__init__(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))\n",
}


@dataclass
class Case:
    args: list[str]
    says: list[str]  # each must appear in the error line (case-insensitive); "re:..." is a regular expression
    files: list[str] = field(default_factory=list)  # names in CSV, written into the case's directory
    early: bool = False  # must be caught before torch loads
    script: bool = False  # run as the console script in a process of its own, not by the batch driver
    skip: Optional[str] = None


def early(args: list[str], says: list[str], files: list[str] | None = None, script: bool = False) -> Case:
    return Case(args, says, files or [], early=True, script=script)


CASES: dict[str, Case] = {
    # types, keys and options: Hydra's composition against the schema
    "depth-not-int": early(["depth=four"], ["depth", "four"], script=True),
    "unknown-key": early(["deprh=3"], ["unknown key", "deprh", "depth"]),  # and the keys there are
    "unknown-act": early(["act=foo"], ["act", "foo", "leaky_relu", "tanh"], script=True),
    "unknown-norm": early(["norm=group"], ["norm", "group", "batch", "layer"]),
    "adam-momentum": early(["optimizer=adam", "optimizer.momentum=0.9"],
                           ["unknown key 'optimizer.momentum'; momentum is a key of optimizer=sgd, rmsprop (not adam): "
                            "optimizer=sgd optimizer.momentum=0.9"]),
    "sgd-betas": early(["optimizer=sgd", "optimizer.betas=[0.9,0.99]"],
                       ["betas is a key of optimizer=adam, adamw (not sgd): "
                        "optimizer=adam optimizer.betas=[0.9,0.99]"]),
    "unknown-key-lists-option-keys": early(["optimizer=sgd", "optimizer.foo=1"],
                                           ["unknown key 'optimizer.foo'; keys here: momentum, name, nesterov, "
                                            "weight_decay"]),
    # did you mean: the key as a group's field, a top-level key, or a close spelling, with the value typed
    "group-key-at-top-level": early(["optimizer=sgd", "momentum=0.9"],
                                    ["unknown key 'momentum'; did you mean optimizer.momentum=0.9?"], script=True),
    "top-level-key-in-a-group": early(["optimizer.lr=0.1"],
                                      ["unknown key 'optimizer.lr'; lr is a top-level key: lr=0.1"]),
    "misspelt-key": early(["epoch=50"], ["unknown key 'epoch'; did you mean epochs=50? keys here: "]),
    "misspelt-group-key": early(["log.progres=false"], ["did you mean log.progress=false?"]),
    # command-line grammar: flags, commas, spaces, ~
    "flag-instead-of-override": early(["--epochs", "50"], ["--epochs 50: deeprun takes key=value overrides: epochs=50"],
                                      script=True),
    "flag-with-equals": early(["--batch-size=8"], ["--batch-size=8: deeprun takes key=value overrides: batch_size=8"]),
    "comma-list-without-brackets": early(["data.features=area,rooms"],
                                         ["data.features=area,rooms: a list needs brackets: data.features=[area,rooms] "
                                          "(to sweep over the values instead, add -m)"], script=True),
    "sweep-without-m": early(["depth=2,8"], ["depth=2,8: comma-separated values are a sweep, which needs -m: "
                                             "deeprun -m depth=2,8"]),
    "space-after-comma": early(["-m", "act=relu,", "tanh"], ["'act=relu,' and 'tanh' are two overrides: remove the "
                                                             "space: act=relu,tanh"], script=True),
    "tilde-in-path": early(["data=csv", "data.path=~/houses.csv", "data.target=price"],
                           ["data.path=~/houses.csv: the shell does not expand ~ after =, and ~ is Hydra grammar; "
                            "write data.path=$HOME/houses.csv"], script=True),
    "step-size-not-int": early(["scheduler=step", "scheduler.step_size=abc"], ["scheduler.step_size", "abc"]),
    "parse-error": early(["depth=[1"], ["depth=[1", "parse"], script=True),
    # ranges and rules: deeprun's validate()
    "depth-0": early(["depth=0"], ["depth", "in [1, 10000]"], script=True),
    "depth-huge": early(["depth=1000000"], ["depth=1000000", "in [1, 10000]"]),
    "width-huge": early(["width=1000000000"], ["depth=3, width=1000000000", "weights", "at most 2^31"]),
    "resnet-counts-both-layers": early(["model=resnet", "depth=10000", "width=400"],  # 1.6e9 by depth x width^2
                                       ["depth=10000, width=400: about 3.2e+09 weights (model=resnet: 2 x depth x "
                                        "width^2: two linear layers a block); at most 2^31"]),
    "lr-inf": early(["lr=inf"], ["lr=inf", "finite", "float32"]),
    "init-a-huge": early(["init=uniform", "init.a=1e300"], ["init.a=1e+300", "float32"]),
    "seed-huge": early(["seed=100000000000000000000"], ["seed=100000000000000000000", "64-bit"]),
    "data-too-big": early(["data=classification", "data.n=10000000", "data.n_features=1000"],
                          ["data.n=10000000 x data.n_features", "at most 2^28"]),
    "width-0": early(["width=0"], ["width", ">= 1"]),
    "lr-0": early(["lr=0"], ["lr", "> 0"]),
    "lr-negative": early(["lr=-1"], ["lr", "> 0"]),
    "dropout-1": early(["dropout=1.0"], ["dropout", "[0, 1)"]),
    "dropout-negative": early(["dropout=-0.1"], ["dropout", "[0, 1)"]),
    "epochs-0": early(["epochs=0"], ["epochs", ">= 1"]),
    "batch-size-0": early(["batch_size=0"], ["batch_size", ">= 1"]),
    "grad-clip-0": early(["grad_clip=0"], ["grad_clip", "> 0"]),
    "batchnorm-batch-of-one": early(["norm=batch", "batch_size=1"], ["batch_size=1", "BatchNorm", "norm=layer"]),
    "device-threads-0": early(["device.threads=0"], ["device.threads", "in [1, 1024]"]),
    "device-threads-huge": early(["device.threads=1000000000000"], ["device.threads", "in [1, 1024]"]),
    "log-every-0": early(["log.every=0"], ["log.every", ">= 1"]),
    "loss-at-0": early(["log.loss_at=[0]"], ["log.loss_at", ">= 1"]),
    "checkpoint-best": early(["save.checkpoints=[best]"], ["save.checkpoints", "best", "init", "final"]),
    "uniform-a-negative": early(["init=uniform", "init.a=-1"], ["init.a", "> 0"]),
    "widths-0": early(["model.widths=[0]"], ["model.widths"]),
    "norm-position": early(["norm.position=middle"], ["norm.position", "middle", "pre", "post"]),
    "custom-model-no-target": early(["model=custom"], ["model._target_"]),
    "csv-no-path": early(["data=csv"], ["data.path"]),
    "csv-missing-file": early(["data=csv", "data.path=missing.csv", "data.target=price"], ["data.path", "missing.csv"]),
    "csv-no-target": early(["data=csv", "data.path=ok.csv"], ["data.target"], ["ok.csv"]),
    "residual-scale-unknown": early(["model=resnet", "model.residual_scale=half"],
                                    ["model.residual_scale", "half", "1, rezero, skipinit, fixup"], script=True),
    "fixup-with-batchnorm": early(["model=resnet", "model.residual_scale=fixup"],
                                  ["model.residual_scale", "fixup", "norm=none"]),
    "cnn-on-a-table": early(["model=cnn"], ["model=cnn", "data=regression", "data=images", "data.image_shape"]),
    "images-too-small": early(["data=images", "data.image_size=2"], ["data.image_size", ">= 4"]),
    "images-too-many-classes": early(["data=images", "data.n_classes=9"], ["data.n_classes", "[2, 8]"]),
    "image-shape-not-chw": early(["data=csv", "data.path=pixels.csv", "data.target=label", "data.image_shape=[2,2]"],
                                 ["data.image_shape", "[c, h, w]"], ["pixels.csv"]),
    # a key added with + that no schema has: an unknown key all the same, not silently ignored
    "unknown-key-added": Case(["+deprh=3", "data.n=16"], ["unknown key", "deprh"]),
    # the CSV file's contents
    "csv-wrong-target": Case(["data=csv", "data.path=ok.csv", "data.target=nope"],
                             ["data.target", "nope", "area, rooms, price"], ["ok.csv"]),
    "csv-empty-file": Case(["data=csv", "data.path=blank.csv", "data.target=price"],
                           ["data.path", "blank.csv", "empty"], ["blank.csv"]),
    "csv-text-feature": Case(["data=csv", "data.path=cities.csv", "data.target=price"],
                             ["data.features", "city", "not numeric"], ["cities.csv"]),
    "csv-empty-cell": Case(["data=csv", "data.path=holes.csv", "data.target=price"],
                           ["holes.csv", r"re:\brows?\b.*\b3\b"], ["holes.csv"], script=True),  # the 3rd data row
    "csv-image-shape-wrong-size": Case(["data=csv", "data.path=pixels.csv", "data.target=label",
                                        "data.image_shape=[1,3,3]"],
                                       ["data.image_shape", "9 pixels", "pixels.csv has 4 feature columns"],
                                       ["pixels.csv"]),
    "csv-one-class": Case(["data=csv", "data.path=cheap.csv", "data.target=label", "data.task=classification"],
                          ["data.target", "label", "one class"], ["cheap.csv"]),
    # found when the run builds its optimiser, model or device
    "nesterov-without-momentum": Case(["optimizer=sgd", "optimizer.nesterov=true"],
                                      ["optimizer.nesterov", "optimizer.momentum"]),
    "custom-model-not-importable": Case(["model=custom", "model._target_=nope.Nope"],
                                        ["model._target_", "nope.Nope", "cannot import", "no module named 'nope'"],
                                        script=True),
    "custom-model-wrong-key": Case(["model=custom", "model._target_=my_nets.Funnel", "+model.hiden=16"],
                                   ["my_nets.Funnel", "unexpected keyword argument 'hiden'"], ["my_nets.py"], script=True),
    "device-cuda": Case(["device=cuda"], ["device", "cuda", "not available"],
                        skip="this machine has a GPU" if HAS_GPU else None),
    "device-mps": Case(["device=mps"], ["device", "mps", "not available"],
                       skip="this machine may have MPS" if sys.platform == "darwin" else None),
}

DRIVER = r"""
import contextlib, io, json, os, sys, traceback
from hydra.core.global_hydra import GlobalHydra
import deeprun.cli as cli

results = {}
for case in json.load(sys.stdin):
    os.chdir(case["cwd"])
    out, err, code = io.StringIO(), io.StringIO(), 0
    had_torch = "torch" in sys.modules
    GlobalHydra.instance().clear()
    sys.argv = ["deeprun", *case["args"]]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main()
        except SystemExit as e:
            if isinstance(e.code, int) or e.code is None:
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results[case["id"]] = {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                           "imported_torch": None if had_torch else "torch" in sys.modules}
print(json.dumps(results))
"""


def argv(case_id: str) -> list[str]:
    """BASE, then the case's overrides; -m first, as a user types it (argparse takes no overrides before it)."""
    args = CASES[case_id].args
    return ["-m", *BASE, *(a for a in args if a != "-m")] if "-m" in args else [*BASE, *args]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    imported_torch: Optional[bool] = None  # the batch driver's cases: did this case load torch (None: loaded before it)


def workdir(root: Path, case_id: str) -> Path:
    """A fresh directory for the case, holding the files it names."""
    d = root / case_id
    d.mkdir()
    for name in CASES[case_id].files:
        (d / name).write_text(CSV[name])
    return d


def shown(case_id: str, p: Outcome) -> str:
    return f"deeprun {' '.join(CASES[case_id].args)}\nexit {p.returncode}\n--- stdout\n{p.stdout}--- stderr\n{p.stderr}"


def check_one_line(case_id: str, p: Outcome) -> None:
    """Exit 2, one line `deeprun: error: ...` saying what the case says, nothing on stdout, no traceback."""
    assert "Traceback" not in p.stdout + p.stderr, shown(case_id, p)
    assert p.returncode == 2, shown(case_id, p)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeprun: error: "), shown(case_id, p)
    line = lines[0].lower()
    missing = [s for s in CASES[case_id].says
               if not (re.search(s[3:], line) if s.startswith("re:") else s.lower() in line)]
    assert not missing, f"the error does not say {missing}\n{shown(case_id, p)}"
    assert p.stdout.strip() == "", f"more printed than the one error line\n{shown(case_id, p)}"


# the fast tier runs the script cases (a few of each kind); the whole suite every case
@pytest.mark.parametrize("case", [c if CASES[c].script else pytest.param(c, marks=pytest.mark.exhaustive)
                                  for c in CASES])
def test_one_line_error(case, tmp_path, monkeypatch, capsys):
    if CASES[case].skip:
        pytest.skip(CASES[case].skip)
    monkeypatch.chdir(workdir(tmp_path, case))
    modules = set(sys.modules)
    try:
        code = run_main(monkeypatch, *argv(case))
    finally:  # a case's own module (my_nets.py) goes with its directory
        for name in set(sys.modules) - modules:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]
    out, err = capsys.readouterr()
    check_one_line(case, Outcome(code, out, err))


EARLY = [c for c in CASES if CASES[c].early and not CASES[c].skip]
SCRIPT = [c for c in CASES if CASES[c].script and not CASES[c].skip]


@background
def early_cases(d: Path) -> dict[str, Outcome]:
    """The early cases one after another in the batch driver, a fresh interpreter: {case id: Outcome}."""
    cases = [{"id": c, "args": argv(c), "cwd": str(workdir(d, c))} for c in EARLY]
    p = run_python(DRIVER, input=json.dumps(cases), cwd=d, timeout=300)
    assert p.returncode == 0 and p.stdout.strip(), f"the batch driver failed\n{p.stdout}\n{p.stderr}"
    return {c: Outcome(**o) for c, o in json.loads(p.stdout.strip().splitlines()[-1]).items()}


@background
def script_cases(d: Path) -> dict[str, Outcome]:
    """The script cases, each as the `deeprun` console script in a process of its own: {case id: Outcome}."""
    done = {}
    for c in SCRIPT:
        p = run_cli(*argv(c), cwd=workdir(d, c))
        done[c] = Outcome(p.returncode, p.stdout, p.stderr)
    return done


@pytest.mark.parametrize("case", EARLY)
def test_an_early_mistake_is_one_line_before_torch_loads(case, early_cases):
    """--help and config errors stay fast: torch is not loaded to report them."""
    p = early_cases.result[case]
    check_one_line(case, p)
    assert p.imported_torch is False, f"torch was imported before the error (or by a case before it)\n{shown(case, p)}"


@pytest.mark.parametrize("case", SCRIPT)
def test_the_console_script_says_the_same_one_line(case, script_cases):
    check_one_line(case, script_cases.result[case])


# --- one_line on the exceptions composing raises (in-process, no torch) ----------------------


def _compose_error(*overrides: str) -> BaseException:
    with pytest.raises(Exception) as info:
        deeprun.compose(list(overrides))
    return info.value


def test_one_line_wrong_type_names_key():
    assert one_line(_compose_error("depth=four")) == "depth: Value 'four' of type 'str' could not be converted to Integer"


def test_one_line_unknown_key_lists_top_level_keys():
    line = one_line(_compose_error("deprh=3"))
    assert line.startswith("unknown key 'deprh'")
    assert {"depth", "width", "epochs", "lr", "batch_size", "seed"} <= set(line.split("keys here: ")[1].split(", "))


def test_one_line_unknown_option_lists_choices():
    line = one_line(_compose_error("act=foo"))
    assert line.startswith("act=foo: no such option; choose from: ")
    assert set(line.split("choose from: ")[1].split(", ")) == {
        "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "mish", "tanh", "sigmoid", "softplus", "identity"}


def test_one_line_parse_error_quotes_override():
    line = one_line(_compose_error("depth=[1"))
    assert line.startswith("cannot parse 'depth=[1'") and "\n" not in line


def test_one_line_config_error_is_its_message():
    e = _compose_error("lr=0")
    assert isinstance(e, deeprun.ConfigError)
    assert one_line(e) == "lr=0.0: must be > 0"


def test_one_line_keeps_first_line_only():
    assert one_line(HydraException("first line\nsecond line")) == "first line"
    assert "\n" not in one_line(ConfigKeyError("a\nb"))


# --- did you mean: one helper for deeprun and deeprun-report --------------------------------------


def test_suggest_names_only_the_near_best_spellings():
    from deeprun.hints import suggest

    assert suggest("epoch", ["epochs", "depth", "expect"]) == "did you mean epochs?"
    assert suggest("zzz", ["epochs", "depth"]) == ""


def test_report_column_hint_is_the_shared_one():
    import pandas as pd

    from deeprun.report import ReportError, _column

    with pytest.raises(ReportError, match=r"--filter: no column 'dept'; did you mean depth\? columns here include"):
        _column(pd.DataFrame({"depth": [2], "act": ["relu"], "final_train_loss": [0.1]}), "dept", "--filter")


def test_compose_unknown_key_says_what_to_type_not_plus():
    with pytest.raises(deeprun.ConfigError) as info:
        deeprun.compose(["dept=4"])
    assert str(info.value).startswith("unknown key 'dept'; did you mean depth=4? keys here: act, batch_size, ")
    assert "+dept" not in str(info.value)
    assert one_line(info.value) == str(info.value)


@pytest.mark.parametrize("overrides, example", [("depth=4", '["depth=4"]'),
                                               ("depth=4 width=8", '["depth=4", "width=8"]')])
def test_compose_takes_a_list_not_a_string(overrides, example):
    with pytest.raises(deeprun.ConfigError) as info:
        deeprun.compose(overrides)
    assert str(info.value) == (f"compose takes a list of overrides, e.g. compose({example}); "
                               f"got the string {overrides!r}")


def test_compose_explains_a_split_override():
    with pytest.raises(deeprun.ConfigError, match=r"^'act=relu,' and 'tanh' are two overrides: remove the space: "
                                                  r"act=relu,tanh$"):
        deeprun.compose(["act=relu,", "tanh"])


def test_version_names_deeprun_torch_and_hydra(main):
    from importlib.metadata import version

    p = main("--version")
    assert p.code == 0 and p.err == "", p.err
    assert p.out == f"deeprun {deeprun.__version__} (torch {version('torch')}, hydra-core {version('hydra-core')})\n"


# --- the size check and out of memory ---------------------------------------------------------


@pytest.mark.parametrize("overrides", [["depth=4", "width=64"], ["data=classification", "depth=2", "width=16"],
                                       ["model.widths=[64,128,32]"], ["model=resnet", "depth=4", "width=64"],
                                       ["model=cnn", "data=images", "depth=10", "width=32", "data.channels=3"],
                                       ["model=resnet_cnn", "data=images", "depth=6", "width=16"]])
def test_weight_estimate_counts_every_weight_layer(overrides, one_thread):
    from deeprun.config import weight_count
    from deeprun.models import count_params

    cfg = compose([*overrides, "data.n=16"])
    params = count_params(deeprun.build_model(cfg, deeprun.build_data(cfg)))
    assert 0.9 <= params / weight_count(cfg) <= 1.1  # biases and norms are the rest


OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 7200000000 bytes"


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error
    return fail


def test_out_of_memory_is_a_recorded_one_line_error(tmp_path, monkeypatch):
    import deeprun.api as api

    monkeypatch.setattr(api, "build_model", _raise(RuntimeError(OOM)))  # before the model exists: the estimate
    cfg = compose(["model=resnet", "depth=100", "width=3000", "epochs=1", "log.progress=false"])
    with pytest.raises(deeprun.OutOfMemory) as info:
        deeprun.run(cfg, out_dir=tmp_path)
    assert str(info.value) == ("out of memory on cpu: model=resnet depth=100 width=3000 has about 1,800,000,000 "
                               "weights; training needs about 29.7 GiB (26.8 GiB for weights, gradients and Adam's "
                               "two moments, 16 bytes each; 2.9 GiB for activations, batch x width x layers x 16 "
                               "bytes); try a smaller depth or width")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == str(info.value)


def test_out_of_memory_in_training_counts_the_built_model(tmp_path, monkeypatch, capsys):
    import torch
    from hydra.core.global_hydra import GlobalHydra

    import deeprun.api as api
    import deeprun.cli as cli

    monkeypatch.setattr(api, "train", _raise(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))
    monkeypatch.setattr(sys, "argv", ["deeprun", "depth=2", "width=8", "data.n=16", "log.progress=false",
                                      "hydra.run.dir=run"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as info:
        cli.main()
    line = capsys.readouterr().err
    assert info.value.code == 2
    assert line.startswith("deeprun: error: out of memory on cpu: model=mlp depth=2 width=8 has 113 parameters; "
                           "training needs about 0 MiB") and line.count("\n") == 1, line
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # the record stays
    assert summary["status"] == "failed" and summary["error"] == line.removeprefix("deeprun: error: ").strip()


@background
def oom_run(d: Path):
    """A 1.8e9-weight resnet under a 1.5 GB address space: allocation fails while the model is built."""
    return run_program("bash", "-c", f"ulimit -v 1500000; exec '{DEEPRUN}' model=resnet depth=100 width=3000 "
                                     "epochs=1 log.progress=false hydra.run.dir=run", cwd=d, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -v caps the address space on Linux")
def test_out_of_memory_through_the_real_cli(oom_run):
    p = oom_run.result
    if p.returncode != 2 and "out of memory" not in p.stderr:
        pytest.skip(f"this torch does not start in 1.5 GB of address space: {p.stderr[-300:]}")
    assert p.returncode == 2 and p.stderr.startswith("deeprun: error: out of memory on cpu: model=resnet depth=100 "
                                                     "width=3000 has about 1,800,000,000 weights; training needs "
                                                     "about 29.7 GiB") and p.stderr.count("\n") == 1, p.stderr
    assert json.loads((oom_run.dir / "run" / "summary.json").read_text())["status"] == "failed"
