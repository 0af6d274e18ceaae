"""A user's mistake ends in one line on stderr, `deeprun: error: ...` naming the key or file, exit status 2.

Each case runs in a fresh directory holding the CSV files it needs. A process
per case would cost a torch import per case, so most cases run one after another
in a single Python process (the batch driver) that calls ``deeprun.cli.main()``,
the function the console script calls, with each case's argv, capturing what it
prints and its exit status. Mistakes deeprun must catch before torch loads
(``early``: Hydra's composition and deeprun's own checks) run first there, and
the driver reports whether each of them imported torch. A few cases of each kind
(``script``) run as the `deeprun` console script as well, in their own process,
as a check on that shortcut. The selected cases start together, two processes at
a time (one torch thread each), when the first of them runs; each test checks
its own case.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from hydra.errors import HydraException
from omegaconf.errors import ConfigKeyError

import deeprun
from conftest import run_cli
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
    "adam-momentum": early(["optimizer=adam", "optimizer.momentum=0.9"], ["unknown key", "optimizer.momentum"]),
    "unknown-key-lists-option-keys": early(["optimizer=sgd", "optimizer.betas=[0.9,0.99]"],
                                           ["unknown key", "optimizer.betas", "momentum", "nesterov"]),
    "step-size-not-int": early(["scheduler=step", "scheduler.step_size=abc"], ["scheduler.step_size", "abc"]),
    "parse-error": early(["depth=[1"], ["depth=[1", "parse"], script=True),
    # ranges and rules: deeprun's validate()
    "depth-0": early(["depth=0"], ["depth", "in [1, 10000]"], script=True),
    "depth-huge": early(["depth=1000000"], ["depth=1000000", "in [1, 10000]"]),
    "width-huge": early(["width=1000000000"], ["depth=3, width=1000000000", "weights", "at most 2^31"]),
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


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    imported_torch: Optional[bool] = None  # in-process cases: did this case load torch (None: loaded before it)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict[str, Outcome]:
    """Run every selected case; {case id: Outcome}."""
    wanted = [item.callspec.params["case"] for item in request.session.items
              if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]
    todo = [c for c in dict.fromkeys(wanted) if not CASES[c].skip]

    def workdir(case_id: str) -> Path:
        d = tmp_path_factory.mktemp(case_id)
        for name in CASES[case_id].files:
            (d / name).write_text(CSV[name])
        return d

    def script(case_id: str) -> dict[str, Outcome]:
        p = run_cli(*BASE, *CASES[case_id].args, cwd=workdir(case_id), env={"OMP_NUM_THREADS": "1"})
        return {case_id: Outcome(p.returncode, p.stdout, p.stderr)}

    def batch(case_ids: list[str]) -> dict[str, Outcome]:
        cases = [{"id": c, "args": [*BASE, *CASES[c].args], "cwd": str(workdir(c))} for c in case_ids]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("HYDRA_FULL_ERROR", None)
        p = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(cases), capture_output=True, text=True,
                           timeout=300, env=env, cwd=tmp_path_factory.mktemp("driver"))
        assert p.returncode == 0 and p.stdout.strip(), f"the batch driver failed\n{p.stdout}\n{p.stderr}"
        return {c: Outcome(**o) for c, o in json.loads(p.stdout.strip().splitlines()[-1]).items()}

    in_process = sorted((c for c in todo if not CASES[c].script), key=lambda c: not CASES[c].early)  # early first
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(batch, in_process)] if in_process else []
        futures += [pool.submit(script, c) for c in todo if CASES[c].script]
        return {k: v for f in futures for k, v in f.result().items()}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error(case, results):
    if CASES[case].skip:
        pytest.skip(CASES[case].skip)
    p = results[case]
    shown = f"deeprun {' '.join(CASES[case].args)}\nexit {p.returncode}\n--- stdout\n{p.stdout}--- stderr\n{p.stderr}"
    assert "Traceback" not in p.stdout + p.stderr, shown
    assert p.returncode == 2, shown
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeprun: error: "), shown
    line = lines[0].lower()
    missing = [s for s in CASES[case].says
               if not (re.search(s[3:], line) if s.startswith("re:") else s.lower() in line)]
    assert not missing, f"the error does not say {missing}\n{shown}"
    assert p.stdout.strip() == "", f"more printed than the one error line\n{shown}"
    if CASES[case].early:  # "--help and config errors stay fast": torch is not loaded to report them
        assert p.imported_torch in (False, None), f"torch was imported before the error\n{shown}"


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
