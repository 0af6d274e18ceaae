"""A user's mistake ends in one line on stderr, `deeprun: error: ...` naming the key or file, exit status 2.

Each case runs `deeprun` as a subprocess in a fresh directory (with the CSV
files it needs). The selected cases start together, two at a time (one torch
thread each), when the first of them runs; each test checks its own case.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

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
}


@dataclass
class Case:
    args: list[str]
    says: list[str]  # each must appear in the error line (case-insensitive); "re:..." a regular expression
    files: list[str] = field(default_factory=list)  # from CSV, written into the case's directory
    skip: str | None = None


CASES: dict[str, Case] = {
    # types and keys, caught when Hydra composes the config
    "depth-not-int": Case(["depth=four"], ["depth", "four"]),
    "unknown-key": Case(["deprh=3"], ["unknown key", "deprh", "depth"]),  # lists the keys there are
    "unknown-key-added": Case(["+deprh=3", "data.n=16"], ["unknown key", "deprh"]),
    "unknown-act": Case(["act=foo"], ["act", "foo", "leaky_relu", "tanh"]),
    "unknown-norm": Case(["norm=group"], ["norm", "group", "batch", "layer"]),
    "adam-momentum": Case(["optimizer=adam", "optimizer.momentum=0.9"], ["unknown key", "optimizer.momentum"]),
    "unknown-key-lists-option-keys": Case(["optimizer=sgd", "optimizer.betas=[0.9,0.99]"],
                                          ["unknown key", "optimizer.betas", "momentum", "nesterov"]),
    "step-size-not-int": Case(["scheduler=step", "scheduler.step_size=abc"], ["scheduler.step_size", "abc"]),
    "parse-error": Case(["depth=[1"], ["depth=[1", "parse"]),
    # ranges and rules, checked by deeprun before torch loads
    "depth-0": Case(["depth=0"], ["depth", ">= 1"]),
    "width-0": Case(["width=0"], ["width", ">= 1"]),
    "lr-0": Case(["lr=0"], ["lr", "> 0"]),
    "lr-negative": Case(["lr=-1"], ["lr", "> 0"]),
    "dropout-1": Case(["dropout=1.0"], ["dropout", "[0, 1)"]),
    "dropout-negative": Case(["dropout=-0.1"], ["dropout", "[0, 1)"]),
    "epochs-0": Case(["epochs=0"], ["epochs", ">= 1"]),
    "batch-size-0": Case(["batch_size=0"], ["batch_size", ">= 1"]),
    "grad-clip-0": Case(["grad_clip=0"], ["grad_clip", "> 0"]),
    "log-every-0": Case(["log.every=0"], ["log.every", ">= 1"]),
    "loss-at-0": Case(["log.loss_at=[0]"], ["log.loss_at", ">= 1"]),
    "checkpoint-best": Case(["save.checkpoints=[best]"], ["save.checkpoints", "best", "init", "final"]),
    "uniform-a-negative": Case(["init=uniform", "init.a=-1"], ["init.a", "> 0"]),
    "widths-0": Case(["model.widths=[0]"], ["model.widths"]),
    "norm-position": Case(["norm.position=middle"], ["norm.position", "middle", "pre", "post"]),
    "custom-model-no-target": Case(["model=custom"], ["model._target_"]),
    # the CSV file
    "csv-no-path": Case(["data=csv"], ["data.path"]),
    "csv-missing-file": Case(["data=csv", "data.path=missing.csv", "data.target=price"], ["data.path", "missing.csv"]),
    "csv-no-target": Case(["data=csv", "data.path=ok.csv"], ["data.target"], ["ok.csv"]),
    "csv-wrong-target": Case(["data=csv", "data.path=ok.csv", "data.target=nope"],
                             ["data.target", "nope", "area, rooms, price"], ["ok.csv"]),
    "csv-empty-file": Case(["data=csv", "data.path=blank.csv", "data.target=price"],
                           ["data.path", "blank.csv", "empty"], ["blank.csv"]),
    "csv-text-feature": Case(["data=csv", "data.path=cities.csv", "data.target=price"],
                             ["city", "not numeric", "data.features"], ["cities.csv"]),
    "csv-empty-cell": Case(["data=csv", "data.path=holes.csv", "data.target=price"],
                           ["holes.csv", r"re:\brows?\b.*\b3\b"], ["holes.csv"]),  # the 3rd data row
    "csv-one-class": Case(["data=csv", "data.path=cheap.csv", "data.target=label", "data.task=classification"],
                          ["data.target", "label", "one class"], ["cheap.csv"]),
    # found when the run builds its optimiser, model or device
    "nesterov-without-momentum": Case(["optimizer=sgd", "optimizer.nesterov=true"],
                                      ["optimizer.nesterov", "optimizer.momentum"]),
    "custom-model-not-importable": Case(["model=custom", "model._target_=nope.Nope"],
                                        ["model._target_", "nope.Nope", "cannot import", "no module named 'nope'"]),
    "device-cuda": Case(["device=cuda"], ["device", "cuda", "not available"],
                        skip="this machine has a GPU" if HAS_GPU else None),
    "device-mps": Case(["device=mps"], ["device", "mps", "not available"],
                       skip="this machine may have MPS" if sys.platform == "darwin" else None),
}


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Run every selected case, two at a time; {case id: CompletedProcess}."""
    wanted = [item.callspec.params["case"] for item in request.session.items
              if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]

    def run(case_id: str) -> subprocess.CompletedProcess:
        case = CASES[case_id]
        d = tmp_path_factory.mktemp(case_id)
        for name in case.files:
            (d / name).write_text(CSV[name])
        return run_cli(*BASE, *case.args, cwd=d, env={"OMP_NUM_THREADS": "1"})

    todo = [c for c in dict.fromkeys(wanted) if not CASES[c].skip]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(todo, pool.map(run, todo)))


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


def test_config_errors_do_not_import_torch(tmp_path):
    """A range error is reported by the CLI before torch loads."""
    code = ("import sys\n"
            "sys.argv = ['deeprun', 'depth=0']\n"
            "import deeprun.cli as c\n"
            "try:\n    c.main()\n    code = 0\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('EXIT', code, 'TORCH', 'torch' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip().splitlines()[-1] == "EXIT 2 TORCH False", p.stdout + p.stderr
    assert p.stderr.startswith("deeprun: error: depth=0")


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
