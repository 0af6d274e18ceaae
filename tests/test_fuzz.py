"""Random override lists, valid and not, through the real CLI: each run trains or exits 2 with one line.

Hypothesis draws a few overrides from the real config groups and keys (their
options read from conf/), mixed with wrong types, negatives, zero, unknown
options, unknown keys and huge values, on top of a small base run. The
property: `deeprun` either trains (exit 0, a finished summary.json) or exits 2
with exactly one line on stderr that names one of the keys it was given.
`epochs` is drawn from small and invalid values only: a huge epoch count is a
valid request for a long run. Runs are in-process (`deeprun.cli.main`, no torch start-up per
example); the 300 examples take a minute or two, so they run in a fresh interpreter of their own, a
background job (conftest.background) on a spare core while the other tests run here, and the test
reads its verdict: Hypothesis's falsifying example and the failed assertion, if any.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT, background, output, run_python

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml"))
          for g in sorted((ROOT / "conf").iterdir()) if g.is_dir() and g.name not in ("hydra", "experiment", "logger")}
BAD_NAMES = ["nope", "RELU", "mlp2", "none_", "1"]
HUGE = [10**12, -10**12, 1e300, "1e400"]
WRONG = ["abc", "true", "[1,2]", "null", "''", "{a: 1}"]
VALUES = {  # key -> values worth trying beyond the wrong types and huge ones every key gets
    "depth": [1, 2, 3, 0, -1, 2.5],
    "width": [1, 4, 8, 0, -3, 7.5],
    "epochs": [1, 2, 0, -1, 1.5],
    "lr": [0.1, 1e-3, 1e3, 0, -0.1],
    "batch_size": [1, 8, 1000, 0, -8],
    "seed": [0, 1, 123, -1],
    "dropout": [0.0, 0.5, 0.99, 1.0, -0.1, 2],
    "grad_clip": [0.5, 10, 0, -1],
    "log.every": [1, 2, 0, -1],
    "log.loss_at": ["[1]", "[1,2]", "[]", "[0]", "[-5]", "[a]"],
    "norm.position": ["pre", "post", "middle"],
    "optimizer.momentum": [0.0, 0.9, -1],
    "init.std": [0.01, 1.0, 0, -1],
    "init.a": [0.5, 0, -2],
    "data.val_fraction": [0.0, 0.2, 0.5, 1.0, -0.1, 1.5],
    "data.noise": [0.0, 0.1, -1],
    "device.threads": [1, 2, 0, -1],
    "model.widths": ["[4]", "[8,4]", "[]", "[0]", "[-2, 3]"],
    "model.residual_scale": ["1", "rezero", "skipinit", "fixup", "2"],
    "data.n": [16, 1, 0, -5],
    "data.n_features": [2, 0],
    "data.n_classes": [2, 3, 8, 9, 1],
    "data.image_size": [4, 8, 2],
    "data.channels": [1, 3, 0],
}
UNKNOWN = ["dpeth=3", "model.widht=4", "+foo=1", "optimizer.momentun=0.9", "log.evry=2"]
BASE = ["depth=2", "width=8", "epochs=2", "log.loss_at=[1]", "log.progress=false",
        "device.threads=1", "data.max_rows=48"]  # max_rows: a small table whatever data= picks
EXIT_USAGE = 2


def fmt(value) -> str:
    return str(value) if not isinstance(value, float) else repr(value)


def override_lists():
    """1 to 4 overrides: a group option (real or not), a key's value (valid, wrong type, huge), an unknown key.
    (Hypothesis loads here, in the fuzz's own interpreter: the test session does not pay for it.)"""
    from hypothesis import strategies as st

    key_value = st.sampled_from(sorted(VALUES)).flatmap(
        lambda key: st.sampled_from(VALUES[key] + ([] if key == "epochs" else HUGE) + WRONG).map(
            lambda value: f"{key}={fmt(value)}"))
    return st.lists(
        st.one_of(
            st.sampled_from(sorted(GROUPS)).flatmap(lambda g: st.sampled_from(GROUPS[g] + BAD_NAMES).map(
                lambda o: f"{g}={o}")),
            key_value,
            st.sampled_from(UNKNOWN),
        ),
        min_size=1, max_size=4)


def named_keys(args: list[str]) -> set[str]:
    """What a one-line error may name for these overrides: each key, its group and its last part."""
    keys = set()
    for a in args:
        key = a.split("=", 1)[0].lstrip("+~")
        keys |= {key, key.split(".")[0], key.split(".")[-1]}
    return keys


def check(args: list[str], run_dir: Path) -> None:
    """`deeprun BASE ARGS` in this process: it trains, or it exits 2 with one line naming a key it was given."""
    from deeprun.cli import main

    err = io.StringIO()
    sys.argv = ["deeprun", *BASE, *args, f"hydra.run.dir={run_dir}"]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if code == 0:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged"), (args, summary)
        return
    assert code == EXIT_USAGE, (args, code, lines)
    assert len(lines) == 1 and lines[0].startswith("deeprun: error: "), (args, lines)
    assert any(k in lines[0] for k in named_keys(args)), (args, lines[0])
    assert not (run_dir / "summary.json").exists(), (args, "a config error left a record")


def fuzz(runs_dir: Path) -> None:
    """300 override lists drawn by Hypothesis, each checked; raises on the first that fails, shrunk."""
    from hypothesis import HealthCheck, given, settings

    counter = itertools.count()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(args=override_lists())
    def every_override_list(args):
        check(args, runs_dir / str(next(counter)))
    every_override_list()


@background(priority=10)  # the longest job: first
def fuzz_run(d: Path):
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); sys.argv = ['deeprun']\n"
            "import test_fuzz\n"
            f"test_fuzz.fuzz(__import__('pathlib').Path({str(d)!r}))\n"
            "print('300 examples: every one trained or exited 2 with one line naming a key')")
    return run_python(code, cwd=d, timeout=900)


@pytest.mark.slow  # 300 runs of the CLI, two Hydra compositions each: a minute or two, beside the other tests
def test_every_override_list_trains_or_exits_2_with_one_line_naming_a_key(fuzz_run):
    p = fuzz_run.result
    assert p.returncode == 0 and "300 examples" in p.stdout, output(p)
