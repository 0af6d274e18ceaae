"""What to type instead: did-you-mean hints for keys, columns and arguments deeprun does not take.

Shared by `deeprun` (cli.one_line, config.compose) and `deeprun-report` (report._column). No torch.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import is_dataclass
from typing import Callable, Iterable, Optional

from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import SCHEMAS, Config, field_names

# Hydra's own command-line flags (`deeprun --hydra-help`); any other `--name` is a mistyped override
HYDRA_FLAGS = ("-m", "--multirun", "--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--package", "-p",
               "--resolve", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--run", "-r",
               "--shell-completion", "-sc", "--experimental-rerun", "--version")


def suggest(name: str, candidates: Iterable[str], show: Callable[[str], str] = str) -> str:
    """'did you mean a or b?' for the close spellings of `name` among `candidates` (each as `show` writes it);
    '' when none is close."""
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=3)
    best = difflib.SequenceMatcher(None, name, close[0]).ratio() if close else 0.0
    close = [c for c in close if difflib.SequenceMatcher(None, name, c).ratio() >= best - 0.1]  # epochs, not depth
    return f"did you mean {' or '.join(map(show, close))}?" if close else ""


def _types(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)  # config.py's annotations are strings (from __future__ import annotations)


def _options(group: str) -> dict[str, type]:
    """{option: schema} of a group whose options have keys of their own; {"": schema} for one schema for all."""
    base = _types(Config).get(group)
    return SCHEMAS.get(group) or ({"": base} if is_dataclass(base) else {})


def _groups() -> list[str]:
    return [g for g in field_names(Config) if _options(g)]


def _chosen(root: Optional[DictConfig], group: str) -> Optional[type]:
    """The schema of the group's option in the composed config (sgd's for optimizer=sgd); None if not known."""
    options = _options(group)
    if "" in options:  # one schema for every option (norm, device, log)
        return options[""]
    node = root.get(group) if root is not None else None
    cls = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return cls if is_dataclass(cls) else None


def _holders(group: str, leaf: str) -> list[str]:
    """The options of `group` whose schema has the key `leaf`, in SCHEMAS' order."""
    return [o for o, cls in _options(group).items() if o and leaf in field_names(cls)]


def unknown_key(key: str, value: Optional[str] = None, root: Optional[DictConfig] = None,
                here: Optional[type] = None) -> str:
    """The error line for an unknown dotted `key` (set to `value`, as typed): the key as a field of a group
    (`momentum` -> optimizer.momentum), as a top-level key (`optimizer.lr` -> lr), or a close spelling.
    `root`: the composed config (its options say which keys there are); `here`: the schema the key was sought in."""
    typed = (lambda k: f"{k}={value}") if value is not None else (lambda k: k)
    head, _, leaf = key.rpartition(".")
    groups = {g: _chosen(root, g) for g in _groups()}
    hint = ""
    if head in groups and leaf in field_names(Config):
        hint = f"{leaf} is a top-level key: {typed(leaf)}"
    elif head in ("", *groups) and leaf != "name":
        others = [g for g in groups if g != head]
        owner = next((g for g in others if groups[g] is not None and leaf in field_names(groups[g])), None)
        holders = {g: _holders(g, leaf) for g in ([head] if head else []) + others}
        group = next((g for g, options in holders.items() if options), None)
        if owner:  # a key of an option chosen now: only its group was missing
            hint = f"did you mean {typed(f'{owner}.{leaf}')}?"
        elif group:  # a key of another option of a group: choose that option too
            now = getattr(root.get(group), "name", None) if root is not None else None
            options = holders[group]
            hint = (f"{leaf} is a key of {group}={', '.join(options)}{f' (not {now})' if now else ''}: "
                    f"{group}={options[0]} {typed(f'{group}.{leaf}')}")
    if hint:
        return f"unknown key {key!r}; {hint}"
    names = field_names(here) if is_dataclass(here) else []
    spelt = suggest(leaf, names, lambda c: typed(f"{head}.{c}" if head else c))  # the key respelt, with its value
    listed = f"keys here: {', '.join(names)}" if names else ""
    return f"unknown key {key!r}; {' '.join(filter(None, (spelt, listed)))}".rstrip("; ")


def _list_typed(key: str) -> bool:
    """Whether any schema types `key` (dotted) as a list, or leaves it open (Any: data.target)."""
    head, _, leaf = key.rpartition(".")
    schemas = [Config] if not head else list(_options(head).values())
    kinds = [str(_types(cls).get(leaf)) for cls in schemas if leaf in field_names(cls)]
    return any("List" in k or k == "typing.Any" for k in kinds)


def ambiguous(override: str) -> str:
    """`key=a,b` outside -m: a list wants brackets, a sweep wants -m."""
    key, _, value = override.partition("=")
    if _list_typed(key.lstrip("+~")):
        return f"{override}: a list needs brackets: {key}=[{value}] (to sweep over the values instead, add -m)"
    return f"{override}: comma-separated values are a sweep, which needs -m: deeprun -m {override}"


def parse_hint(override: str, args: list[str]) -> Optional[str]:
    """Hydra's grammar error in words, for the mistakes that make most of them; None for the rest."""
    key, _, value = override.partition("=")
    if value.endswith(","):  # `act=relu, tanh`: the shell split the list at the space
        after = args[args.index(override) + 1] if override in args[:-1] else None
        if after is not None and "=" not in after:
            return f"{override!r} and {after!r} are two overrides: remove the space: {override}{after}"
        return f"{override!r} ends in a comma: give the next value, or remove the comma"
    if value.startswith("~"):  # a path from home: ~ is Hydra grammar, and no shell expands it after `=`
        return (f"{override}: the shell does not expand ~ after =, and ~ is Hydra grammar; "
                f"write {key}=$HOME{value[1:]}")
    if "~" in value:
        return f"{override}: ~ is Hydra grammar; quote the value: '{key}=\"{value}\"'"
    return None


def flag_override(args: list[str]) -> Optional[str]:
    """`--epochs 50` or `--epochs=50`, which Hydra's argparse rejects: the key=value override meant."""
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or len(name) == 2 or any(f.startswith(name) for f in HYDRA_FLAGS):
            continue  # not a flag, `--`, or Hydra's own (argparse takes a prefix of one: --multi)
        key = name[2:]
        key = key.replace("-", "_") if key.replace("-", "_") in field_names(Config) else key  # --batch-size
        typed = arg
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("-") and "=" not in args[i + 1]:
            value, typed = args[i + 1], f"{arg} {args[i + 1]}"
        return f"{typed}: deeprun takes key=value overrides: {key}={value if eq or value else 'VALUE'}"
    return None


def from_error(e: BaseException, args: list[str]) -> Optional[str]:
    """The one line for an error of Hydra's composition that these hints explain better; None otherwise.
    `args`: the overrides as given (a parse error names one; the next one may be the rest of it)."""
    if isinstance(e, OverrideParseException):
        return parse_hint(e.override, args) if e.override else None
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, ConfigCompositionException) and (m := re.match(r"Ambiguous value for argument '(.*)'$", first)):
        return ambiguous(m.group(1))
    cause = e.__cause__ if isinstance(e, ConfigCompositionException) else e
    if not isinstance(cause, OmegaConfBaseException) or not re.search(r"not in (struct|')", str(cause)):
        return None
    key = cause.full_key
    m = re.search(rf"use \+{re.escape(key)}=(.*)", str(e))  # Hydra's advice carries the value as typed
    node = cause.parent_node
    root = node._get_root() if isinstance(node, DictConfig) else None
    return unknown_key(key, m.group(1).strip() if m else None, root, cause.object_type)
