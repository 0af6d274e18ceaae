"""One run, start to finish: config -> data -> model -> train -> records. The CLI and notebooks share it."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from . import display
from .config import OutOfMemory, memory_needed, validate, weight_count
from .data import build_data, resolve_device
from .models import build_model, count_params, resolve_init
from .records import (EPOCHS, LAYERS, config_row, epoch_columns, layer_columns, metrics_row, missed_expectation,
                      write_atomic, write_summary, write_table)
from .train import History, train


@dataclass
class Result:
    summary: dict  # the run's row of the results table
    epochs: pd.DataFrame  # one row per epoch (epoch 0 = at initialisation)
    layers: pd.DataFrame  # one row per (logged epoch, layer)
    model: Optional[nn.Module]
    out_dir: Optional[Path]


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
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    history = History(metric="")
    row = config_row(cfg, cfg.init.name, cfg.device.name)
    status, error, model, data = "running", None, None, None
    try:  # from the first write on: a Ctrl-C at any point leaves `interrupted`, never a stale `running`
        if out is not None:
            write_summary(out, {**row, "status": status})
        validate(cfg)  # inside: in a sweep, a bad value is that job's `failed` record
        row["init"] = resolve_init(cfg.init, cfg.act)
        device = resolve_device(cfg.device.name, job if cfg.device.spread else None)
        threads = cfg.device.threads or threads
        if threads is not None:
            torch.set_num_threads(threads)
        row.update(device=str(device), threads=torch.get_num_threads())
        data = build_data(cfg, device)
        history.metric = data.metric
        model = build_model(cfg, data)
        row.update(task=data.task, n_classes=data.n_classes, loss_units=data.loss_units, params=count_params(model),
                   rows_dropped=data.rows_dropped)  # data.missing=drop
        _checkpoint(out, cfg, "init", model)
        show = cfg.log.progress if progress is None else progress
        with display.epoch_progress(cfg.epochs, enabled=show) as show_row:
            def log(row: dict) -> None:
                show_row(row)
                if on_log is not None:
                    on_log(row)
            train(model, data, cfg, history, log)
        status = "diverged" if history.diverged_epoch is not None else "completed"
        _checkpoint(out, cfg, "final", model)
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except Exception as e:
        oom = _out_of_memory(e, cfg, row, data)
        status, error = "failed", oom or f"{type(e).__name__}: {e}"
        if oom:  # too big a model is the user's to fix: one line, exit 2
            raise OutOfMemory(oom) from None
        raise
    finally:
        epochs = pd.DataFrame(history.epochs, columns=epoch_columns(history.metric or "val_metric"))
        layers = pd.DataFrame(history.layers(), columns=layer_columns())
        summary = {**row, "status": status, "diverged_epoch": history.diverged_epoch,
                   **metrics_row(cfg, history.metric, epochs, layers),
                   "seconds": time.perf_counter() - start, "error": error}
        if any(v is not None for v in cfg.expect.values()):
            summary["expect_missed"] = missed_expectation(cfg.expect, summary)
        if out is not None:
            try:
                write_table(out / EPOCHS, epochs)
                write_table(out / LAYERS, layers)
                write_summary(out, summary)  # last: a summary with a final status means the rest is there
            except OSError as e:  # disk full, folder gone: the summary must not claim a whole record
                with contextlib.suppress(OSError):
                    write_summary(out, {**summary, "status": "failed", "error": f"records not written: {e}"})
                raise
    return Result(summary, epochs, layers, model, out)


def run_group(cfgs: list[DictConfig], out_dirs: list[str | Path], threads: Optional[int] = None) -> list[dict]:
    """Train jobs whose stack.group_key is equal as one stacked model; each keeps its own records
    in its out_dir, exactly as `run` writes them. Returns each job's summary, in order. A job that
    fails is recorded `failed` and the others go on; Ctrl-C records the unfinished ones
    `interrupted` and then raises KeyboardInterrupt."""
    # STUB until the stacked loop lands: one job after another
    summaries = []
    for cfg, out in zip(cfgs, out_dirs):
        try:
            summaries.append(run(cfg, out_dir=out, progress=False, threads=threads).summary)
        except Exception as e:
            from .records import SUMMARY
            import json
            path = Path(out) / SUMMARY
            summaries.append(json.loads(path.read_text()) if path.exists() else {"status": "failed", "error": str(e)})
    return summaries


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

