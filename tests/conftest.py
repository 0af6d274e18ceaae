"""Shared helpers: compose the real config and shrink it; run `deeprun` as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import deeprun

ROOT = Path(__file__).resolve().parents[1]
DEEPRUN = Path(sys.executable).with_name("deeprun")  # the console script of this environment
TINY = ["epochs=3", "depth=2", "width=8", "log.progress=false"]


def tiny(*overrides: str):
    """The real config with small settings; later overrides win. The default data set shrinks to 64 rows."""
    other_data = any(o.startswith("data=") for o in overrides)
    return deeprun.compose([*TINY, *([] if other_data else ["data.n=64"]), *overrides])


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


def run_cli(*args: str, cwd: Path, timeout: float = 120, env: dict | None = None,
            program: str = "deeprun") -> subprocess.CompletedProcess:
    """`deeprun ARGS` (or another of deeprun's console scripts) in `cwd`, as a user's shell runs it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(DEEPRUN.with_name(program)), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def cli(tmp_path):
    """cli(*args) runs deeprun in a fresh directory (tmp_path); records land under tmp_path/outputs."""
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


def run_dirs(root: Path) -> list[Path]:
    """Run directories (those holding a summary.json) under root, oldest first."""
    return sorted((p.parent for p in Path(root).rglob("summary.json")), key=lambda p: p.stat().st_mtime)


def run_main(monkeypatch, *args: str) -> int:
    """`deeprun ARGS` in this process (no torch start-up to pay); its exit status. Hydra's job logging
    and torch's thread count are put back afterwards, so later tests see them as they were."""
    import logging

    import torch

    from deeprun import cli, sweep

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # cli.main sets it; restored after the test
    monkeypatch.setattr(sys, "argv", ["deeprun", *args])
    monkeypatch.setattr(sweep, "_started", {})
    threads = torch.get_num_threads()
    loggers = {name: logger.disabled for name, logger in logging.root.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        cli.main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:  # Hydra's job logging disables every logger; other tests' loggers must work
        logging.root.handlers[:], logging.root.level = handlers, level
        for name, disabled in loggers.items():
            logging.root.manager.loggerDict[name].disabled = disabled
        torch.set_num_threads(threads)
