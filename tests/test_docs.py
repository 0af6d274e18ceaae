"""Every command README.md and docs/*.md show composes, so the docs cannot rot.

A command is a line of a code block, or an inline code span, that starts with `deeprun`,
`deeprun-diagnose`, `deeprun-report` or `make` (chained with `&&`, `;` or `|`, each part
counts). All in this process, no subprocess per command (torch's start-up is seconds):

- `deeprun` / `deeprun-diagnose`: composed as `deeprun --cfg job` composes them, through the batched
  launcher's own loader (deeprun.launcher.FastConfigLoader over Hydra's: one Hydra composition per
  distinct set of group choices, the plain `key=value` overrides applied as Hydra applies them), then
  checked by deeprun.config.validate, as a run checks them before it trains. `-m` sweeps are
  expanded as Hydra's sweepers expand them, the preset's `hydra.sweeper.params` included (Optuna's
  intervals by their two ends), and every value of every swept key is composed in some job.
  `-p PACKAGE` must name a node of the composed config.
- `deeprun-report`: parsed by deeprun-report's own argparse parser, nothing run.
- `make TARGET`: TARGET is a target of the Makefile; `make run ARGS="..."` composes ARGS.

A command whose shown output is `deeprun: error: MSG` (or a sweep's `job N failed: MSG`) must fail
with MSG itself, unless MSG is one only a run can meet (RUNTIME_ERRORS); then it must compose.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from unittest import mock

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, OverrideType
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from deeprun import cli, hints, report
from deeprun.config import ConfigError, conf_dir, validate
from deeprun.launcher import FastConfigLoader

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("deeprun", "deeprun-diagnose", "deeprun-report", "make")
MAKE_RUNS_DEEPRUN = ("run",)  # make targets that hand ARGS to `deeprun`

# Placeholders the docs write where a reader puts their own value: (what the docs write, what is composed).
PLACEHOLDERS = [
    ("<stamp>", "2026-11-22_14-49-18-714823"),
    ("PATH...", "PATH"),
    ("experiment=NAME", "experiment=vanishing_gradients"),
    ("device.threads=N", "device.threads=2"),
    ("hydra.launcher.group_size=N", "hydra.launcher.group_size=8"),
    ("hydra.sweeper.n_trials=N", "hydra.sweeper.n_trials=4"),
]
DROPPED = ("...", "<overrides>")  # tokens that stand for "your own arguments"

# Errors the docs show that only running meets (a file's contents, a missing extra, what a sweep
# directory already holds, the records a report reads): those commands must still compose.
RUNTIME_ERRORS = (
    "data.features: column 'kind' of houses.csv is not numeric",  # the CSV's contents
    "logger=mlflow needs mlflow, which is not installed",  # the extras are installed here
    "hydra/sweeper=optuna: its Hydra plugin is not installed",
    "--html needs altair",
    "hydra.sweep.dir=DIR already holds",  # the sweep directory's contents
    "--pivot seed act final_val_loss: a cell holds runs",  # the records
)

FENCE = re.compile(r"^\s*(```|~~~)\s*(\S*)")
SHOWN_ERROR = re.compile(r"^(?:deeprun|deeprun-report|deeprun-diagnose): (?:error: (.*)|job \d+ failed: (.*) \([^()]*\))$")
INLINE = re.compile(r"`([^`]+)`")
CHAIN = re.compile(r"\s(?:&&|\|\||\||;)\s")


@dataclass
class Command:
    where: str  # README.md:42
    text: str
    shown_error: Optional[str] = None
    args: list = field(default_factory=list)


def _parts(text: str) -> list[str]:
    """The commands of one line: `a && b | c` is three."""
    return [p.strip() for p in CHAIN.split(text) if p.strip()]


def _program(text: str) -> Optional[str]:
    first = text.split(maxsplit=1)[0] if text.split() else ""
    return first if first in PROGRAMS else None


def extract(path: Path) -> list[Command]:
    """The commands a page shows, each with its file and line, and the error its output shows."""
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    found: list[Command] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    in_code, lang, last = False, "", None
    prose: list[tuple[int, str]] = []
    orphans: list[tuple[int, str]] = []  # an error block after a paragraph: "In `deeprun ...`, job 1 fails:"
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence:
            in_code, lang, last = (not in_code), fence.group(2), None
            continue
        if not in_code:
            prose.append((number, line))
            continue
        if lang == "python":
            continue
        text = line.strip()
        text = text[2:] if text.startswith("$ ") else text
        shown = SHOWN_ERROR.match(text)
        if shown:
            if last is not None:
                last.shown_error = shown.group(1) or shown.group(2)
            else:
                orphans.append((number, shown.group(1) or shown.group(2)))
            continue
        for part in _parts(text):
            if _program(part):
                last = Command(f"{name}:{number}", _uncommented(part))
                found.append(last)
    # inline code: a span may wrap onto the next line of its paragraph; a bare program name is a name
    text = "\n".join(line for _, line in prose)
    starts = list(itertools.accumulate([0] + [len(line) + 1 for _, line in prose]))
    inline: list[tuple[int, Command]] = []
    for m in INLINE.finditer(text):
        span = " ".join(m.group(1).replace("\\|", "|").split())
        if "\n\n" in m.group(0):
            continue
        index = next(i for i, s in enumerate(starts) if s > m.start()) - 1
        for part in _parts(span):
            if _program(part) and len(part.split()) > 1:
                inline.append((prose[index][0], Command(f"{name}:{prose[index][0]}", part)))
    for number, error in orphans:  # the last inline command of the lines just above the block
        before = [c for n, c in inline if number - 4 <= n < number]
        if before:
            before[-1].shown_error = error
    return found + [c for _, c in inline]


def _uncommented(text: str) -> str:
    return re.sub(r"\s+#\s.*$", "", text)


def _tokens(text: str) -> list[str]:
    for shown, composed in PLACEHOLDERS:
        text = text.replace(shown, composed)
    return [t for t in shlex.split(text, comments=True) if t not in DROPPED]


# --- composing -------------------------------------------------------------------------------


class _Loader(FastConfigLoader):
    """The launcher's loader, whose master config here holds no hydra overrides: the command's own go
    with each job's. A plain `hydra.key=value` is applied to the template like any plain override (Hydra
    applies both kinds alike, after composing), so `hydra.sweep.dir=DIR` costs no composition."""

    @staticmethod
    def _plain(parsed, group_exists):
        plain = FastConfigLoader._plain(parsed, group_exists)
        last = max((i for i, (o, p) in enumerate(zip(parsed, plain)) if not p and not _hydra_change(o, group_exists)),
                   default=-1)
        return [p or (_hydra_change(o, group_exists) and i > last) for i, (o, p) in enumerate(zip(parsed, plain))]


def _hydra_change(o, group_exists) -> bool:
    return (o.is_hydra_override() and o.type == OverrideType.CHANGE and o.package is None
            and not o.is_sweep_override() and not group_exists(o.key_or_group))


class Composer:
    """deeprun's composition, memoised: the error of a command (None: it composes)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        inner = GlobalHydra.instance().config_loader()
        self.loader = _Loader(inner)
        self.master = inner.load_configuration(config_name="config", overrides=[], run_mode=RunMode.MULTIRUN)
        self.parser = OverridesParser.create()
        self.memo: dict[tuple, tuple] = {}
        self.targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))

    def check(self, command: Command) -> list[str]:
        """The errors of one command: [] when it composes."""
        try:
            args = _tokens(command.text)
        except ValueError as e:  # unbalanced quotes
            return [f"cannot split it as a shell would: {e}"]
        command.args = args
        program = args[0]
        if program == "make":
            return self._make(args[1:])
        if program == "deeprun-report":
            return self._report(args[1:])
        return self._deeprun(program, args[1:])

    def _make(self, args: list[str]) -> list[str]:
        targets = [a for a in args if "=" not in a]
        variables = dict(a.split("=", 1) for a in args if "=" in a)
        errors = [f"make {t}: no such target in the Makefile (targets: {', '.join(sorted(self.targets))})"
                  for t in targets if t not in self.targets]
        if "ARGS" in variables and any(t in MAKE_RUNS_DEEPRUN for t in targets):
            errors += self._deeprun("deeprun", shlex.split(variables["ARGS"]))
        if "ARGS" in variables and "experiments" in targets:  # docs/experiments.py --only NAME
            only = shlex.split(variables["ARGS"])
            for name in only[only.index("--only") + 1:] if "--only" in only else []:
                if not (conf_dir() / "experiment" / f"{name}.yaml").is_file():
                    errors.append(f"--only {name}: no preset conf/experiment/{name}.yaml")
        return errors

    def _report(self, args: list[str]) -> list[str]:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                report._parser().parse_args(args)
        except SystemExit:
            return [stderr.getvalue().strip().removeprefix("deeprun-report: error: ")]
        return []

    def _deeprun(self, program: str, args: list[str]) -> list[str]:
        flag = hints.flag_override(args)  # `--epochs 50`, as cli._main checks it before Hydra
        if flag:
            return [flag]
        multirun, package, overrides, it = False, None, [], iter(args)
        for a in it:
            if a in ("-m", "--multirun"):
                multirun = True
            elif a in ("-c", "--cfg", "-p", "--package"):
                value = next(it, None)
                if a in ("-p", "--package"):
                    package = value
                elif value not in ("job", "hydra", "all"):
                    return [f"--cfg {value}: Hydra takes job, hydra or all"]
            elif a in ("--help", "-h", "--hydra-help", "--version", "--info", "-i", "--resolve"):
                pass
            elif a.startswith("-"):
                return [f"{a}: not a flag of {program}"]
            else:
                overrides.append(a)
        jobs = self._jobs(overrides) if multirun else [overrides]
        if isinstance(jobs, str):
            return [jobs]
        errors = []
        for job in jobs:
            error = self._composed(tuple(job), package)[1]
            if error and error not in errors:
                errors.append(error)
        return errors

    def _jobs(self, overrides: list[str]) -> list[list[str]] | str:
        """The jobs of a sweep, as Hydra's sweeper makes them (the preset's sweeper params first, the
        command line's after, a key's last value winning): those of the grid that hold every value of
        every swept key at least once (job i takes each key's value i mod its count: a 4 x 3 x 2 grid gives
        4 jobs), as composing every job would take minutes."""
        try:
            parsed = self.parser.parse_overrides(overrides)
        except Exception as e:
            return cli.one_line(e)
        for o in parsed:
            if o.is_sweep_override() and o.is_hydra_override():
                return f"Sweeping over Hydra's configuration is not supported : '{o.input_line}'"
        first = [o.input_line if not o.is_sweep_override() else self._values(o)[0] for o in parsed]
        params, error = self._composed(tuple(first))
        if error:
            return error
        params = [f"{k}={v}" for k, v in params.items()]
        axes: dict[str, list[str]] = {}
        for o in self.parser.parse_overrides(params) + parsed:
            axes[o.get_key_element()] = self._values(o) if o.is_sweep_override() else [o.input_line]
        values = list(axes.values())
        return [[v[i % len(v)] for v in values] for i in range(max(map(len, values), default=1))]

    def _values(self, o) -> list[str]:
        key = o.get_key_element()
        if isinstance(o.value(), IntervalSweep):  # Optuna's interval: both ends
            return [f"{key}={o.value().start}", f"{key}={o.value().end}"]
        return [f"{key}={v}" for v in o.sweep_string_iterator()]

    def _composed(self, job: tuple, package: Optional[str] = None) -> tuple:
        """(the job's hydra.sweeper.params as a dict, or None; the error's one line, or None)."""
        key = (job, package)
        if key not in self.memo:
            with mock.patch.object(sys, "argv", ["deeprun", *job]):  # cli.one_line's hints read the argv
                try:
                    self.memo[key] = self._compose(job, package), None
                except Exception as e:
                    self.memo[key] = None, cli.one_line(e)
        return self.memo[key]

    def _compose(self, job: tuple, package: Optional[str]) -> dict:
        cfg = self.loader._derive(self.master, list(job))[0]  # a copy of its own: ours to change
        if package is not None and OmegaConf.select(cfg, package) is None:
            raise ConfigError(f"-p {package}: no such package in the composed config")
        params = cfg.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params) if params is not None else {}
        with read_write(cfg), open_dict(cfg):  # the task's config, as Hydra's run_job hands it over
            del cfg["hydra"]
        for name in ("data.path", "init.path"):  # the user's files: present, in a scratch directory
            path = OmegaConf.select(cfg, name)
            if path:
                (self.cwd / path).parent.mkdir(parents=True, exist_ok=True)
                (self.cwd / path).touch()
        validate(cfg)
        return params


@pytest.fixture(scope="module")
def composer(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("docs")
    old = os.getcwd()
    os.chdir(cwd)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            yield Composer(cwd)
    finally:
        os.chdir(old)
        GlobalHydra.instance().clear()


def failures(commands: list[Command], composer: Composer) -> list[str]:
    out = []
    for c in commands:
        errors = composer.check(c)
        shown = c.shown_error
        if shown is not None and not any(shown.startswith(r) for r in RUNTIME_ERRORS):
            if shown not in errors:
                got = "; ".join(errors) or "it composes"
                out.append(f"{c.where}: {c.text}\n    the docs show the error: {shown}\n    deeprun says: {got}")
        elif errors:
            out.append(f"{c.where}: {c.text}\n    " + "\n    ".join(errors))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_command_shown_composes(doc, composer):
    bad = failures(extract(doc), composer)
    assert not bad, f"{len(bad)} command(s) of {doc.relative_to(ROOT)} do not compose:\n" + "\n".join(bad)


def test_the_commands_are_found():
    """The extraction itself: the README's tour, a wrapped inline command, a chained one, a shown error."""
    readme = {c.text for c in extract(ROOT / "README.md")}
    assert "deeprun -m experiment=vanishing_gradients" in readme
    assert any(t.startswith("deeprun-report ") for t in readme)
    assert any(t.startswith("make ") for t in readme)
    assert len(readme) >= 20
    api = extract(ROOT / "docs" / "api.md")
    assert any(c.text.startswith("deeprun act=swish") and c.shown_error for c in api)


def test_a_broken_command_fails(composer, tmp_path):
    """The check can fail, and says where and why."""
    page = tmp_path / "page.md"
    page.write_text("Try `deeprun act=swish`.\n\n```\ndeeprun -m depth=2,8 dept=4\ndeeprun-report --pivot a b\n"
                    "make nosuchtarget\n$ deeprun lr=-1\ndeeprun: error: lr=-1.0: must be > 1\n```\n")
    bad = failures(extract(page), composer)
    assert len(bad) == 5, bad
    assert "act=swish: no such option" in bad[-1]
    assert "did you mean depth=4?" in bad[0]
    assert "nosuchtarget" in bad[2]
    assert "must be > 0" in bad[3]


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^(```|~~~).*?^\1", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_link_reaches_a_file_and_heading_in_the_repository(doc):
    bad = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            page = (doc.parent / path).resolve() if path else doc
            if not page.exists():
                bad.append(f"{doc.relative_to(ROOT)}:{number}: {target}: no such file")
            elif anchor and page.suffix == ".md" and anchor not in _anchors(page):
                bad.append(f"{doc.relative_to(ROOT)}:{number}: {target}: no such heading in {page.name}")
    assert not bad, "\n".join(bad)
