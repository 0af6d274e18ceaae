"""`deeprun`: Hydra composes the config, deeprun runs it, rich prints the outcome.

A user's mistake (an unknown key or option, a wrong type, a value out of range, a
missing file) ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from . import __version__, hints, sweep
from .config import ConfigError, OutOfMemory, conf_dir, validate

USAGE_ERROR = 2
# a path that cannot hold records: the user's to fix (exit 2); anything else (ENOSPC, EIO) exits 1
PATH_ERRNOS = (errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EROFS, errno.ENAMETOOLONG)
# Hydra plugins behind deeprun's optional extras: group -> option -> extra
PLUGIN_EXTRAS = {"hydra/launcher": {"submitit_slurm": "slurm", "submitit_local": "slurm"},
                 "hydra/sweeper": {"optuna": "optuna"}}


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> Optional[float]:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return _sweep_job(cfg, hydra_cfg)
    try:
        validate(cfg)  # fail fast, before torch loads
        from .api import run

        result = run(cfg, out_dir=hydra_cfg.runtime.output_dir)
    except ConfigError as e:  # raised here, past Hydra's job runner, it would print a second line
        _discard_unused(Path(hydra_cfg.runtime.output_dir), mistaken=not isinstance(e, OutOfMemory))  # OOM: a record
        _usage_error(e)
    if cfg.log.progress:
        from .display import print_summary

        print_summary(result.summary, result.out_dir)
    missed = result.summary.get("expect_missed")
    if missed:
        print(f"deeprun: {missed}", file=sys.stderr)
        sys.exit(1)
    return None


def _sweep_job(cfg: DictConfig, hydra_cfg: DictConfig) -> float:
    """One job of a sweep: runs and records itself, never raises (unless strict=true), and returns
    the objective for a sweeper such as Optuna. Hydra's launchers (basic, joblib, submitit) call it
    once per job; the batched launcher, -m's default, trains its groups itself (deeprun/launcher.py)."""
    from .records import config_key

    out, top, num = Path(hydra_cfg.runtime.output_dir), Path(hydra_cfg.sweep.dir), hydra_cfg.job.num
    finished = sweep.finished_run(top, config_key(cfg)) if cfg.resume else None
    if finished is not None:
        done, summary = finished
        if done != out:
            _discard_unused(out)
        print(f"deeprun: job {num} skipped: finished before, in {done}", file=sys.stderr)
        return sweep.objective(cfg, summary)
    from .api import run

    try:
        summary = run(cfg, out_dir=out, progress=False, job=num, threads=sweep.job_threads(hydra_cfg)).summary
    except Exception as e:  # the job's record says `failed`, with the message; the sweep goes on
        why = one_line(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        print(f"deeprun: job {num} failed: {why} ({out.name})", file=sys.stderr)
        if cfg.strict:
            raise sweep.JobFailed(f"job {num} failed and strict=true: sweep stopped") from e
        return sweep.objective(cfg, {"status": "failed"})
    finally:
        sweep.add_result(top, out)
    shown = summary.get(cfg.objective)  # the run's own number; a sweeper gets the penalty for a diverged job
    shown = f"{shown:.4g}" if isinstance(shown, float) else shown
    print(f"deeprun: job {num} {summary['status']}, {cfg.objective} {shown} ({out.name})", file=sys.stderr)
    return sweep.objective(cfg, summary)


def _diagnose(cfg: DictConfig) -> Optional[float]:
    """deeprun-diagnose: the net at initialisation (deeprun/diagnose.py); under -m, one job of the sweep."""
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # a one-job-at-a-time launcher (basic, joblib, submitit)
        from .diagnosis import diagnose_group

        row = diagnose_group([cfg], [out], threads=sweep.job_threads(hydra_cfg))[0]
        sweep.add_result(Path(hydra_cfg.sweep.dir), out)
        print(f"deeprun: job {hydra_cfg.job.num} {row.get('status')}: {row.get('verdict@init') or row.get('error')} "
              f"({out.name})", file=sys.stderr)
        return sweep.objective(cfg, row)
    try:
        validate(cfg)
        from .diagnosis import diagnose

        result = diagnose(cfg, out_dir=out)
    except ConfigError as e:
        _discard_unused(out, mistaken=not isinstance(e, OutOfMemory))
        _usage_error(e)
    if cfg.log.progress:
        from .display import print_diagnosis

        print_diagnosis(result, out)
    return None


# what the batched launcher runs a group of this app's jobs with, and the record each job leaves
_diagnose.deeprun_group = "deeprun.diagnosis:diagnose_group"
_diagnose.deeprun_record = "diagnosis.json"  # records.DIAGNOSIS: records loads pandas, which --help need not
_diagnose_app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_diagnose)


def main() -> None:
    _main(_app)


def diagnose_main() -> None:
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:  # deeprun-diagnose's own page (conf/hydra/help/)
        sys.argv.append("hydra/help=diagnose")
    _main(_diagnose_app)


def _main(app) -> None:
    # Let exceptions reach us instead of Hydra's multi-line report, so that a
    # user's mistake becomes one line with exit status 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if "--version" in sys.argv[1:]:  # before Hydra's own, which names only Hydra's
        print(version())
        sys.exit(0)
    flag = hints.flag_override(sys.argv[1:])  # `--epochs 50`: Hydra's argparse would print its usage
    if flag:
        _usage_error(ConfigError(flag))
    status = 0
    try:
        app()
    except (ConfigError, HydraException, OmegaConfBaseException, sweep.DirTaken) as e:
        _usage_error(e)
    except ValueError as e:  # Hydra's own command-line checks (`--cfg` with `-m`) raise ValueError
        if not _raised_in_hydra(e):
            raise
        _usage_error(_group_literal(sys.argv[1:]) or e)
    except BrokenPipeError:  # `deeprun --help | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        print("deeprun: interrupted; records marked 'interrupted'", file=sys.stderr)
        status = 130
    except sweep.JobFailed as e:
        print(f"deeprun: {e}", file=sys.stderr)
        status = 1
    except OSError as e:  # the output folder cannot be made or written (a bad path, a full disk)
        status = _os_error(e)
    if sweep.started_dir() is not None:  # the end of a sweep, however it ended
        try:
            status = max(status, sweep.finish(sweep.started_dir()))
        except OSError as e:
            status = max(status, _os_error(e))
    sys.exit(status)


def version() -> str:
    """`deeprun 0.1.0 (torch 2.5.1, hydra-core 1.3.2)`, read from the installed packages: torch is not imported."""
    from importlib.metadata import PackageNotFoundError, version as installed

    def of(package: str) -> str:
        try:
            return installed(package)
        except PackageNotFoundError:
            return "not installed"
    return f"deeprun {__version__} (torch {of('torch')}, hydra-core {of('hydra-core')})"


def _os_error(e: OSError) -> int:
    """One line for a failed write; exit status 2 when the path given cannot hold records, else 1."""
    where = f"{e.filename}: " if e.filename else ""
    print(f"deeprun: error: cannot write {where}{e.strerror or e}", file=sys.stderr)
    return USAGE_ERROR if e.errno in PATH_ERRNOS else 1


def _discard_unused(run_dir: Path, mistaken: bool = False) -> None:
    """Remove what Hydra made for a run that never started (only .hydra/, then the folder if empty).
    `mistaken`: a config error stopped it before training (an absent device, a bad CSV), so its
    records say nothing; they go too. Only files deeprun names: the folder may be the user's own."""
    from .records import DIAGNOSIS, EPOCHS, LAYERS, SUMMARY, record_of  # here: pandas loads slowly

    if mistaken:
        for name in (SUMMARY, EPOCHS, LAYERS, DIAGNOSIS):
            (run_dir / name).unlink(missing_ok=True)
    if record_of(run_dir) is None:
        shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
        outputs = (Path.cwd() / "outputs").resolve()
        with contextlib.suppress(OSError):  # rmdir stops at the first folder that holds anything
            run_dir.rmdir()
            for folder in run_dir.resolve().parents:  # outputs/runs/<day> of the default run.dir, if now empty
                if folder == outputs or outputs not in folder.parents:
                    break
                folder.rmdir()


def _group_literal(args: list[str]) -> Optional[ConfigError]:
    """`act=1`, `debug=true`: Hydra says only "Config group override must be a string"; name the override."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        group = conf_dir() / key
        if group.is_dir() and re.fullmatch(r"[-+.\deE]+|true|false|null", value, re.IGNORECASE):
            options = ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
            return ConfigError(f"{key}={value}: no such option; choose from: {options}")
    return None


def _asked_by(group: str, option: str, args: list[str]) -> Optional[str]:
    """The user's override whose config chose `group=option` (`hparams_search=lr_width` picks
    hydra/sweeper=optuna), so that an error about the choice names what the user typed."""
    chosen = re.compile(rf"override\s+/{re.escape(group)}\s*:\s*{re.escape(option)}\s*$", re.MULTILINE)
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        for name in value.split(","):  # `-m hparams_search=a,b` sweeps over options
            if not re.fullmatch(r"[\w/-]+", key + name):  # not a group's option: no file to read
                continue
            path = conf_dir() / key / f"{name}.yaml"
            if path.is_file() and chosen.search(path.read_text()):
                return f"{key}={name}"
    return None


def _raised_in_hydra(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}hydra{os.sep}" in tb.tb_frame.f_code.co_filename


def _usage_error(e: BaseException) -> None:
    print(f"deeprun: error: {one_line(e)}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def one_line(e: BaseException) -> str:
    """What was wrong, where, and what is allowed, from ConfigError or Hydra/OmegaConf's own errors."""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, _, option = e.missing_cfg_file.rpartition("/")
        extra = PLUGIN_EXTRAS.get(group, {}).get(option)
        if extra:
            asked = _asked_by(group, option, sys.argv[1:])
            who = f"{asked} needs {group}={option}, whose" if asked else f"{group}={option}: its"
            return f"{who} Hydra plugin is not installed; pip install 'deeprun[{extra}]'"
        options = ", ".join(o for o in (e.options or []))
        return f"{group}={option}: no such option; choose from: {options}"
    hint = hints.from_error(e, sys.argv[1:])  # unknown keys, `a,b` without -m, `act=relu, tanh`, `~/`
    if hint:
        return hint
    if isinstance(e, OverrideParseException):
        return f"cannot parse {e.override!r}: {str(e).strip().splitlines()[0]} (override grammar: key=value)"
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    key = getattr(cause, "full_key", None)
    message = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    if key and not isinstance(e, ConfigError):
        return f"{key}: {message}"
    return message


if __name__ == "__main__":
    main()
