"""One run, start to finish: config -> data -> model -> train -> records. The CLI and notebooks share it."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from . import display
from .config import validate
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
    status, error, model = "running", None, None
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
        row.update(task=data.task, params=count_params(model), rows_dropped=data.rows_dropped)  # data.missing=drop
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
        status, error = "failed", f"{type(e).__name__}: {e}"
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


def _checkpoint(out: Optional[Path], cfg: DictConfig, name: str, model: nn.Module) -> None:
    if out is not None and name in cfg.save.checkpoints:
        write_atomic(out / f"{name}.pt", lambda f: torch.save(model.state_dict(), f), mode="wb")

