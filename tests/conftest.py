"""Shared helpers: compose the real config and shrink it; run `deeprun` in this process or as a user does.

Two tiers: `make test` runs everything; `make test-fast` leaves out the marks `slow` (a second or
more in this process), `exhaustive` (a family of like cases past its first few: fast_first),
`subprocess` and `browser`. A test that starts a process (a `deeprun` command, a fresh interpreter,
a launcher's workers) pays seconds of torch start-up, so it carries the `subprocess` mark. Processes
start through run_cli, start_cli, run_python or run_program here (the `cli` fixture, background
jobs); `subprocess.Popen` is watched, and a test that starts one without the mark fails, naming
the mark, so that none slips into the fast tier. Tests that use `cli` or a background job are
marked by themselves.

Background jobs (`background`): the commands the selected tests read (sweeps, signals, fresh
interpreters, the fuzz) start together at the start of the session, one at a time per spare core,
while the in-process tests run here; the tests that read them run last, so they seldom wait, and
a test that would wait runs a queued job itself meanwhile. The summary line `background jobs: ...`
says how that went.
"""

from __future__ import annotations

import collections
import copy
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

import deeprun

ROOT = Path(__file__).resolve().parents[1]
DEEPRUN = Path(sys.executable).with_name("deeprun")  # the console script of this environment
TINY = ["epochs=3", "depth=2", "width=8", "log.progress=false"]
PROCESS_MARK = "subprocess"  # the mark of a test that starts a process


def tiny(*overrides: str):
    """The real config with small settings; later overrides win. The default data set shrinks to 64 rows."""
    other_data = any(o.startswith("data=") for o in overrides)
    return compose([*TINY, *([] if other_data else ["data.n=64"]), *overrides])


_GROUPS = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*") if p.is_dir()}
_templates: dict[tuple, Any] = {}


def compose(overrides: list[str]):
    """deeprun.compose(overrides), the same config (tests/test_launcher.py checks it), in a tenth of the time:
    Hydra composes once per distinct set of group choices (`data=csv`, `model=resnet`), a template; a copy of
    it takes the plain `key=value` overrides as Hydra's own compose applies them (its
    `_apply_overrides_to_config`), then deeprun's validate. Any other override (`+`, `~`, a sweep, a
    package, hydra's keys, a group chosen twice), or any error, goes to deeprun.compose, whose result or
    error is the answer."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    from deeprun.config import conf_dir, validate

    overrides = list(overrides)
    try:
        parser = _templates.setdefault("parser", OverridesParser.create())
        parsed = parser.parse_overrides(overrides)
        for o in parsed:
            if (o.type != OverrideType.CHANGE or o.package is not None or o.is_sweep_override()
                    or o.key_or_group.split(".")[0] == "hydra" or isinstance(o.value(), dict)):
                raise ValueError(o.input_line)  # deeprun.compose's to compose
        groups = [o.key_or_group for o in parsed if o.key_or_group in _GROUPS]
        if len(set(groups)) < len(groups):
            raise ValueError(groups)  # a group chosen twice: Hydra's to say what that means
        # the group choices, in a fixed order: the defaults list, not the command line, orders composition
        choices = tuple(sorted(o.input_line for o in parsed if o.key_or_group in _GROUPS))
        if choices not in _templates:
            from hydra import compose as hydra_compose, initialize_config_dir

            with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
                _templates[choices] = hydra_compose(config_name="config", overrides=list(choices))
        cfg = copy.deepcopy(_templates[choices])
        ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if o.key_or_group not in _GROUPS], cfg)
        validate(cfg)
        return cfg
    except Exception:
        return deeprun.compose(overrides)


def fast_first(values, keep: Any = 2, multi: bool = False) -> list:
    """A parametrized family of like cases: the first `keep` (a number) or those in `keep` (a collection)
    run in the fast tier, the rest are marked `exhaustive` (the whole suite runs them all). `multi`: each
    value is a tuple of several arguments."""
    values = list(values)
    kept = values[:keep] if isinstance(keep, int) else [v for v in values if v in keep]
    return [v if v in kept else pytest.param(*(v if multi else (v,)), marks=pytest.mark.exhaustive)
            for v in values]


@pytest.fixture
def one_thread():
    """Tiny nets: one intra-op thread is faster and immune to a busy machine's oversubscription."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def compose_tiny():
    return tiny


# --- processes -----------------------------------------------------------------------------------------


def process_env(env: dict | None = None) -> dict:
    """The environment of a command a test starts: this one's, unbuffered, one torch thread (tests run
    side by side on shared cores), without HYDRA_FULL_ERROR; `env` wins, a None value removes the variable."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    full.pop("HYDRA_FULL_ERROR", None)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return full


def run_program(*argv: str, cwd: Path | None = None, timeout: float = 240, env: dict | None = None,
                input: str | None = None) -> subprocess.CompletedProcess:
    """A command (argv) run to its end in `cwd`, in process_env(env), its output captured as text."""
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=process_env(env), input=input)


def run_cli(*args: str, cwd: Path, timeout: float = 240, env: dict | None = None, program: str = "deeprun",
            input: str | None = None) -> subprocess.CompletedProcess:
    """`deeprun ARGS` (or another of deeprun's console scripts) in `cwd`, as a user's shell runs it."""
    return run_program(DEEPRUN.with_name(program), *args, cwd=cwd, timeout=timeout, env=env, input=input)


def start_cli(*args: str, cwd: Path, env: dict | None = None, program: str = "deeprun",
              **popen: Any) -> subprocess.Popen:
    """`deeprun ARGS` started and left running (to be signalled): its own session, output piped."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "start_new_session": True,
             **popen}
    return subprocess.Popen([str(DEEPRUN.with_name(program)), *args], cwd=cwd, env=process_env(env), **popen)


def run_python(code: str, *args: str, cwd: Path | None = None, timeout: float = 240, env: dict | None = None,
               input: str | None = None) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` in a fresh interpreter of this environment (what it imports starts empty)."""
    return run_program(sys.executable, "-c", code, *args, cwd=cwd, timeout=timeout, env=env, input=input)


def output(p: subprocess.CompletedProcess) -> str:
    """A finished command as a failed assertion shows it."""
    return f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


@pytest.fixture
def cli(tmp_path):
    """cli(*args) runs deeprun in a fresh directory (tmp_path); records land under tmp_path/outputs."""
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


PROCESS_FIXTURES = {"cli"}  # fixtures that start processes: a test that uses one is marked `subprocess`
_state = threading.local()  # .allowed: this thread runs a background job
_current: dict[str, Any] = {"item": None}  # the test running now, from its fixtures' setup to their teardown


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current["item"] = item
    try:
        return (yield)
    finally:
        _current["item"] = None


def _check_may_start_a_process(what) -> None:
    item = _current["item"]
    if item is None or getattr(_state, "allowed", False) or item.get_closest_marker(PROCESS_MARK):
        return
    raise RuntimeError(f"{item.nodeid} starts a process ({what!r}) but is not marked {PROCESS_MARK}: mark it "
                       f"@pytest.mark.{PROCESS_MARK} (the fast tier runs in-process tests only), or run deeprun "
                       "in this process with conftest.run_main")


_popen_init = subprocess.Popen.__init__


def _watched_popen_init(self, args, *rest, **kwargs):
    _check_may_start_a_process(args)
    _popen_init(self, args, *rest, **kwargs)


subprocess.Popen.__init__ = _watched_popen_init


def together(*calls: Callable[[], Any]) -> list:
    """Each call in a thread of its own, all at once (commands that must overlap); their results, in order."""
    allowed = getattr(_state, "allowed", False)
    results: list = [None] * len(calls)
    errors: list = []

    def one(i: int) -> None:
        _state.allowed = allowed
        try:
            results[i] = calls[i]()
        except BaseException as e:
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --- background jobs -------------------------------------------------------------------------------------


@dataclass
class Done:
    dir: Path  # the job's working directory, fresh
    result: Any  # what the job returned (a CompletedProcess, or whatever it built)

    @property
    def proc(self) -> Any:
        return self.result


class _Jobs:
    """Named jobs, fn(dir) -> result, run in worker threads (one per spare core) or by a test waiting for one."""

    def __init__(self) -> None:
        self.fns: dict[str, Callable[[Path], Any]] = {}
        self.priority: dict[str, int] = {}
        self.futures: dict[str, Future] = {}
        self.queue: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}  # each job's wall time
        self.waited = 0.0  # tests' time spent waiting for a job that was running
        self.t0 = self.last = 0.0

    def start(self, names: list[str], tmp_path_factory) -> None:
        """Queue the jobs, the highest priority first (then as listed), and start the workers."""
        self.t0 = time.monotonic()
        for name in sorted(names, key=lambda n: -self.priority[n]):
            fut: Future = Future()
            self.futures[name] = fut
            self.queue.append((name, tmp_path_factory.mktemp(name.rsplit(".", 1)[-1]), fut))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = int(os.environ.get("DEEPRUN_TEST_WORKERS", max(1, cores - 1)))
        for _ in range(min(workers, len(self.queue))):
            threading.Thread(target=self._work, daemon=True).start()

    def _take(self, name: str | None = None):
        with self.lock:
            if name is not None:
                for entry in self.queue:
                    if entry[0] == name:
                        self.queue.remove(entry)
                        return entry
            return self.queue.popleft() if self.queue else None

    def _run(self, entry) -> None:
        name, d, fut = entry
        if not fut.set_running_or_notify_cancel():
            return
        _state.allowed = True
        t = time.monotonic()
        try:
            fut.set_result(Done(d, self.fns[name](d)))
        except BaseException as e:  # the test that reads it fails with it
            fut.set_exception(e)
        finally:
            _state.allowed = False
            self.last = time.monotonic()
            self.seconds[name] = self.last - t

    def _work(self) -> None:
        while (entry := self._take()) is not None:
            self._run(entry)

    def result(self, name: str) -> Done:
        """The job's result; waiting for it, this thread runs the job itself if no worker took it yet,
        or else another queued job."""
        fut = self.futures[name]
        while not fut.done():
            entry = self._take(name)
            if entry is None:
                break
            self._run(entry)
        if not fut.done():
            t = time.monotonic()
            fut.exception()  # waits for the worker running it
            self.waited += time.monotonic() - t
        return fut.result()


_jobs = _Jobs()


def background(fn: Callable[[Path], Any] | None = None, *, name: str | None = None, result: bool = False,
               priority: int = 0) -> Any:
    """A session-scoped fixture, named `name` (or as `fn`), that gives Done(dir, fn(dir)) (with `result`:
    fn(dir) alone): `fn` runs in a fresh directory, in the background from the session's start (jobs of
    higher `priority` first: a long one gets a head start), when a selected test uses the fixture. Such
    tests are marked `subprocess` (a job starts processes) and run at the end of the session.
    Use as `@background` or `@background(priority=...)`."""
    if fn is None:
        return lambda f: background(f, name=name, result=result, priority=priority)
    name = name or fn.__name__
    job = f"{fn.__module__}.{name}"
    _jobs.fns[job] = fn
    _jobs.priority[job] = priority
    PROCESS_FIXTURES.add(name)

    def fixture():
        done = _jobs.result(job)
        return done.result if result else done
    fixture.background_job = job
    fixture.__doc__ = fn.__doc__
    return pytest.fixture(scope="session", name=name)(fixture)


def pytest_terminal_summary(terminalreporter):
    """How the background jobs went: their count and wall time, when the last ended, how long tests waited."""
    if _jobs.seconds:
        longest = sorted(_jobs.seconds.items(), key=lambda kv: -kv[1])[:3]
        terminalreporter.write_line(
            f"background jobs: {len(_jobs.seconds)}, {sum(_jobs.seconds.values()):.0f} s of wall time in all, the last "
            f"done {_jobs.last - _jobs.t0:.0f} s after they started; tests waited {_jobs.waited:.0f} s for them; "
            "longest: " + ", ".join(f"{n.rsplit('.', 1)[-1]} {t:.0f} s" for n, t in longest))


def _job_names(item) -> list[str]:
    """The background jobs an item reads (through its fixtures, directly or not)."""
    names = []
    for fixture_name in item.fixturenames:
        for fixture_def in item._fixtureinfo.name2fixturedefs.get(fixture_name, ()):
            job = getattr(fixture_def.func, "background_job", None)
            if job and job not in names:
                names.append(job)
    return names


def pytest_collection_modifyitems(config, items):
    """Mark the tests that start processes; move those that read a background job to the end."""
    for item in items:
        if PROCESS_FIXTURES & set(item.fixturenames):
            item.add_marker(PROCESS_MARK)
    readers = [item for item in items if _job_names(item)]
    if readers:
        ids = {id(item) for item in readers}
        items[:] = [item for item in items if id(item) not in ids] + readers


@pytest.fixture(scope="session", autouse=True)
def _background_jobs(request, tmp_path_factory):
    """Start every background job a selected test reads (unless a skip mark skips the test), in the
    order those tests run."""
    from _pytest.skipping import evaluate_skip_marks

    names = list(dict.fromkeys(n for item in request.session.items if evaluate_skip_marks(item) is None
                               for n in _job_names(item)))
    if names:
        _jobs.start(names, tmp_path_factory)
    yield


# --- in this process -------------------------------------------------------------------------------------


def run_dirs(root: Path) -> list[Path]:
    """Run directories (those holding a summary.json) under root, oldest first."""
    return sorted((p.parent for p in Path(root).rglob("summary.json")), key=lambda p: p.stat().st_mtime)


def run_main(monkeypatch, *args: str, program: str = "deeprun") -> int:
    """`deeprun ARGS` (or `deeprun-diagnose ARGS`) in this process (no torch start-up to pay); its exit
    status. Hydra's job logging and torch's thread count are put back afterwards, so later tests see
    them as they were; so is sys.path, to which deeprun adds the working directory (model._target_)."""
    import logging

    import torch

    from deeprun import cli, sweep

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # cli.main sets it; restored after the test
    monkeypatch.setattr(sys, "argv", [program, *args])
    monkeypatch.setattr(sweep, "_started", {})
    monkeypatch.setattr(sys, "path", sys.path[:])
    threads = torch.get_num_threads()
    loggers = {name: logger.disabled for name, logger in logging.root.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        {"deeprun": cli.main, "deeprun-diagnose": cli.diagnose_main}[program]()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:  # Hydra's job logging disables every logger; other tests' loggers must work
        logging.root.handlers[:], logging.root.level = handlers, level
        for name, disabled in loggers.items():
            logging.root.manager.loggerDict[name].disabled = disabled
        torch.set_num_threads(threads)


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def main(monkeypatch, capsys, tmp_path):
    """main(*args): `deeprun ARGS` in this process, in tmp_path; Ran(exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str, program: str = "deeprun") -> Ran:
        capsys.readouterr()
        code = run_main(monkeypatch, *args, program=program)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)
    return run
