"""`deeprun`: Hydra composes the config, deeprun runs it, rich prints the outcome.

A user's mistake (an unknown key or option, a wrong type, a value out of range, a
missing file) ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, conf_dir, schema_keys, validate

USAGE_ERROR = 2


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    try:
        validate(cfg)
        from .api import run  # torch loads here, after the config is known to be good
        from .display import print_summary

        result = run(cfg, out_dir=HydraConfig.get().runtime.output_dir)
    except ConfigError as e:  # raised here, past Hydra's job runner, it would print a second line
        _usage_error(e)
    if cfg.log.progress:
        print_summary(result.summary, result.out_dir)


def main() -> None:
    # Let exceptions reach us instead of Hydra's multi-line report, so that a
    # user's mistake becomes one line with exit status 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _app()
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        _usage_error(e)
    except BrokenPipeError:  # `deeprun --help | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        print("deeprun: interrupted; records marked 'interrupted'", file=sys.stderr)
        sys.exit(130)


def _usage_error(e: BaseException) -> None:
    print(f"deeprun: error: {one_line(e)}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def one_line(e: BaseException) -> str:
    """What was wrong, where, and what is allowed, from ConfigError or Hydra/OmegaConf's own errors."""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, _, option = e.missing_cfg_file.rpartition("/")
        options = ", ".join(o for o in (e.options or []))
        return f"{group}={option}: no such option; choose from: {options}"
    if isinstance(e, OverrideParseException):
        return f"cannot parse {e.override!r}: {str(e).strip().splitlines()[0]} (override grammar: key=value)"
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    key = getattr(cause, "full_key", None)
    message = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    if "not in struct" in message or "not in '" in message:
        parent, _, name = (key or "").rpartition(".")
        allowed = schema_keys(parent)
        hint = f"; keys here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {key!r}{hint}"
    if key and not isinstance(e, ConfigError):
        return f"{key}: {message}"
    return message


if __name__ == "__main__":
    main()
