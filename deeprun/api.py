"""One run, start to finish: config -> data -> model -> train -> records. The CLI and notebooks share it."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from . import display, loggers
from .config import OutOfMemory, memory_needed, validate, weight_count
from .data import build_data, resolve_device
from .diagnosis import target_rank, verdict_at_init
from .models import build_model, count_params, resolve_init
from .records import (EPOCHS, LAYERS, config_row, epoch_columns, layer_columns, metrics_row, missed_expectation,
                      remove_partial, write_atomic, write_summary, write_table)
from .train import History, member_options, train


@dataclass
class Result:
    summary: dict  # the run's row of the results table
    epochs: pd.DataFrame  # one row per epoch (epoch 0 = at initialisation)
    layers: pd.DataFrame  # one row per (logged epoch, layer)
    model: Optional[nn.Module]
    out_dir: Optional[Path]


SMALL_WORK = 1 << 24  # multiply-adds a step below which one torch thread is fastest (more only wait on each other)
SMALL_OP = 1 << 21  # ... or of the largest layer's: a deep narrow net's ops are each too small to split


def run(cfg: DictConfig, out_dir: Optional[str | Path] = None, progress: Optional[bool] = None,
        job: Optional[int] = None, threads: Optional[int] = None,
        on_log: Optional[Callable[[dict], None]] = None) -> Result:
    """Train as `cfg` says; with `out_dir`, write summary.json, epochs.csv, layers.csv and checkpoints there.

    `on_log(row)` is called with each logged epoch's row of epochs.csv as soon as it is read
    (a live plot in a notebook; the benchmark's lockstep rivals).

    `job` is the job number in a sweep (device.spread maps it to a GPU); `threads` is the torch
    thread count when device.threads leaves it open (a parallel launcher's share of the cores).
    A failure or Ctrl-C still leaves complete records (status failed / interrupted)
    before the exception goes on to the caller.
    """
    show = cfg.log.progress if progress is None else progress
    return _train_jobs([_Job(cfg, out_dir)], job, threads, alone=True, progress=show, on_log=on_log)[0]


def run_group(cfgs: list[DictConfig], out_dirs: list[str | Path], threads: Optional[int] = None,
              job: Optional[int] = None) -> list[dict]:
    """Train jobs whose stack.group_key is equal as one stacked model; each keeps its own records
    in its out_dir, exactly as `run` writes them. Returns each job's summary, in order. A job that
    fails is recorded `failed` and the others go on; Ctrl-C records the unfinished ones
    `interrupted` and then raises KeyboardInterrupt."""
    jobs: list[_Job] = []
    try:
        for cfg, out in zip(cfgs, out_dirs):
            jobs.append(_Job(cfg, out))
    except KeyboardInterrupt:  # before training: the records made so far say so
        for j in jobs:
            j.status, j.error = "interrupted", "KeyboardInterrupt"
            j.result(1)
        raise
    # members of equal optimiser settings side by side: each run of them is one param group
    order = sorted(range(len(jobs)), key=lambda i: json.dumps(member_options(cfgs[i]), sort_keys=True, default=str))
    _train_jobs([jobs[i] for i in order], job, threads, alone=False)
    return [j.summary for j in jobs]


class _Job:
    """One job's config, records and outcome as it goes through _train_jobs."""

    def __init__(self, cfg: DictConfig, out_dir: Optional[str | Path]):
        self.cfg, self.out = cfg, Path(out_dir) if out_dir is not None else None
        self.start = time.perf_counter()
        self.history = History(metric="")
        self.row = config_row(cfg, cfg.init.name, cfg.device.name)
        self.status, self.error, self.model = "running", None, None
        self.target_rank: Optional[int] = None  # the data's, for verdict@init
        self.summary: dict = {}
        self.logger: Optional[loggers.Logger] = None  # logger=tensorboard | mlflow: opened just before training
        if self.out is not None:  # from the first write on: a Ctrl-C leaves `interrupted`, never a stale `running`
            self.out.mkdir(parents=True, exist_ok=True)
            remove_partial(self.out)
            write_summary(self.out, {**self.row, "status": self.status})

    def fail(self, e: Exception, data=None) -> Optional[str]:
        """Record the failure; returns the out-of-memory line when it was one."""
        oom = _out_of_memory(e, self.cfg, self.row, data)
        self.status, self.error = "failed", oom or f"{type(e).__name__}: {e}"
        return oom

    def result(self, stack_size: int) -> Result:
        """Write the records (summary.json last: a final status means the rest is there)."""
        epochs = pd.DataFrame(self.history.epochs, columns=epoch_columns(self.history.metric))
        layers = pd.DataFrame(self.history.layers(), columns=layer_columns())
        self.summary = {**self.row, "status": self.status, "diverged_epoch": self.history.diverged_epoch,
                        **metrics_row(self.cfg, self.history.metric, epochs, layers),
                        "verdict@init": verdict_at_init(self.cfg, layers, self.model, self.target_rank),
                        "seconds": (time.perf_counter() - self.start) / stack_size, "stack_size": stack_size,
                        "host": platform.node(), "torch": torch.__version__,
                        "error": self.error}
        if any(v is not None for v in self.cfg.expect.values()):
            self.summary["expect_missed"] = missed_expectation(self.cfg.expect, self.summary)
        try:
            if self.out is not None:
                try:
                    write_table(self.out / EPOCHS, epochs)
                    write_table(self.out / LAYERS, layers)
                    write_summary(self.out, self.summary)
                except OSError as e:  # disk full, folder gone: the summary must not claim a whole record
                    with contextlib.suppress(OSError):
                        write_summary(self.out, {**self.summary, "status": "failed", "error": f"records not written: {e}"})
                    raise
        finally:  # after the records: the epochs a Ctrl-C left unsynced, the summary, the status; never raises
            if self.logger is not None:
                self.logger, logger = None, self.logger
                logger.finish(self.history, self.summary)
        return Result(self.summary, epochs, layers, self.model, self.out)


def _train_jobs(jobs: list[_Job], job: Optional[int], threads: Optional[int], alone: bool, progress: bool = False,
                on_log: Optional[Callable[[dict], None]] = None) -> list[Result]:
    """Build the jobs' data (once: they share it) and models (each its own), train them together,
    write each job's records. `alone`: a solo run, whose failure goes on to the caller; it may show
    a progress bar and call on_log(row) at each logged epoch."""
    live, data = list(jobs), None
    try:
        for j in list(live):  # inside: in a sweep, a bad value is that job's `failed` record
            try:
                validate(j.cfg)
                j.row["init"] = resolve_init(j.cfg.init, j.cfg.act)
            except Exception as e:
                if alone:
                    raise
                j.fail(e)
                live.remove(j)
        if live:
            cfg = live[0].cfg
            device = resolve_device(cfg.device.name, job if cfg.device.spread else None)
            for j in live:
                j.row["device"] = str(device)
            data = build_data(cfg, device)
            rank = target_rank(data)  # verdict@init's bottleneck rule
            for j in list(live):
                try:
                    j.history.metric, j.target_rank = data.metric, rank
                    j.model = build_model(j.cfg, data)
                    j.row.update(task=data.task, n_classes=data.n_classes,
                                 loss_units=data.loss_units, params=count_params(j.model),
                                 rows_dropped=data.rows_dropped)  # data.missing=drop
                    _checkpoint(j.out, j.cfg, "init", j.model)
                except Exception as e:
                    if alone:
                        raise
                    j.fail(e, data)
                    live.remove(j)
        for j in list(live):  # logger=tensorboard | mlflow: a bad URI is one line, before any training
            try:
                j.logger = loggers.open_logger(j.cfg, j.out)
            except Exception as e:
                if alone:
                    raise
                j.fail(e)
                live.remove(j)
        if live:
            torch.set_num_threads(cfg.device.threads or threads or _threads_for(live, data))
            for j in live:
                j.row["threads"] = torch.get_num_threads()
                if j.logger is not None:
                    j.logger.start(j.row)
            with display.epoch_progress(cfg.epochs, enabled=progress) as show_row:
                def log(member: int, row: dict) -> None:
                    show_row(row)
                    if live[member].logger is not None:  # at the host sync: the epochs since the last, the layers
                        live[member].logger.log(live[member].history)
                    if on_log is not None:
                        on_log(row)
                train([j.model for j in live], data, [j.cfg for j in live], [j.history for j in live], log)
            for j in live:
                j.status = "diverged" if j.history.diverged_epoch is not None else "completed"
                _checkpoint(j.out, j.cfg, "final", j.model)
    except KeyboardInterrupt:
        for j in live:
            j.status, j.error = "interrupted", "KeyboardInterrupt"
        raise
    except Exception as e:
        ooms = [j.fail(e, data) for j in live if j.status == "running"]
        if alone:
            if ooms and ooms[0]:  # too big a model is the user's to fix: one line, exit 2
                raise OutOfMemory(ooms[0]) from None
            raise
    finally:
        results, unwritten = [], None
        for j in jobs:  # every job's records, even when one's cannot be written (a full disk)
            try:
                results.append(j.result(len(live) or 1))
            except OSError as e:
                unwritten = unwritten or e
        if unwritten is not None:
            raise unwritten
    return results


def _threads_for(jobs: list[_Job], data) -> int:
    return threads_for(jobs[0].model, data, jobs[0].cfg.batch_size, len(jobs))


def threads_for(model: nn.Module, data, batch_size: Optional[int], members: int = 1) -> int:
    """Torch threads for this work: one for a small net (SMALL_WORK) or one of small layers (SMALL_OP: on a
    busy machine, threads that split a small op wait on each other, 2-8x slower), else torch's default."""
    rows = min(batch_size or len(data.x_train), len(data.x_train))
    positions = math.prod(data.in_shape[1:]) if len(data.in_shape) > 1 else 1  # a conv weight's uses per sample
    uses = members * rows * positions
    largest = max((p.numel() for p in model.parameters()), default=0)
    return 1 if uses * count_params(model) <= SMALL_WORK or uses * largest <= SMALL_OP else DEFAULT_THREADS


DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, read before any run changes it


def _out_of_memory(e: Exception, cfg: DictConfig, row: dict, data) -> Optional[str]:
    """For an allocation that failed (CPU or GPU): the model's size and about what it needs; None for others."""
    oom = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
    if not (isinstance(e, oom) or isinstance(e, RuntimeError) and re.search(
            r"can't allocate memory|out of memory|not enough memory", str(e), re.IGNORECASE)):
        return None
    params = row.get("params")  # the model's own count once built, else the estimate from the config
    count = f"{params:,} parameters" if params else f"about {weight_count(cfg):,} weights"
    rows = len(data.x_train) if data is not None else int(cfg.data.get("n") or 0) or cfg.batch_size or 1
    weights, activations = memory_needed(cfg, params or weight_count(cfg), rows)
    fix = "a smaller batch_size" if activations > weights else "a smaller depth or width"
    model, where = cfg.model.get("name") or cfg.model.get("_target_"), f" on {row['device']}" if "device" in row else ""
    return (f"out of memory{where}: model={model} depth={cfg.depth} width={cfg.width} has {count}; training needs "
            f"about {_gib(weights + activations)} ({_gib(weights)} for weights, gradients and Adam's two moments, "
            f"16 bytes each; {_gib(activations)} for activations, batch x width x layers x 16 bytes); try {fix}")


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 27 else f"{n / 2 ** 20:.0f} MiB"


def _checkpoint(out: Optional[Path], cfg: DictConfig, name: str, model: nn.Module) -> None:
    if out is not None and name in cfg.save.checkpoints:
        write_atomic(out / f"{name}.pt", lambda f: torch.save(model.state_dict(), f), mode="wb")

