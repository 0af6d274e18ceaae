"""One declaration per concept, checked against everything that repeats it.

- deeprun/schema.py's columns: docs/records.md's tables are its rendering; real records (tiny runs of an mlp
  regression, a classification, a resnet and a conv ResNet, and a diagnosis, in this process) hold only
  columns it declares for that file, with the kind it declares; results.csv's columns are in its order; the
  modules' own column selections are its columns; deeprun-report refuses an outcome as a pivot axis.
- The option names (conf/<group>/*.yaml) agree with config.py's tables (CHOICES, ACTIVATION_TABLE, SCHEMAS)
  and the torch-side ones built on them (models, train, data, probes, meanfield, diagnosis).
- Defaults: every key both a dataclass of deeprun/config.py and a conf/ file set has one value.
- docs/config.md names every group, every option of each and every key with its default.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import DictConfig, OmegaConf

import deeprun
from deeprun import config, records, schema
from deeprun.config import conf_dir

from conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
CONF = conf_dir()
GROUP_FIELDS = ("model", "act", "init", "norm", "optimizer", "scheduler", "device", "data", "logger")  # Config's


# --- conf/ as files -------------------------------------------------------------------------------------


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


NOT_CHOSEN = ("hydra/help",)  # conf/ groups a user does not choose: deeprun's and deeprun-diagnose's --help texts


def groups() -> list[str]:
    """conf/'s groups a user chooses from: each folder holding options (hydra/launcher: conf/hydra/launcher/)."""
    found = []
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir()):
        found += [folder.name] if any(folder.glob("*.yaml")) else \
            [f"{folder.name}/{sub.name}" for sub in sorted(folder.iterdir()) if sub.is_dir()]
    return [g for g in found if g not in NOT_CHOSEN]


def option_file(group: str, option: str) -> DictConfig:
    """The keys conf/<group>/<option>.yaml itself sets for the group's node (no defaults list, no other nodes)."""
    path = CONF / group / f"{option}.yaml"
    raw = OmegaConf.load(path)
    if path.read_text().startswith("# @package _global_"):
        raw = raw[group]
    return OmegaConf.create({k: v for k, v in raw.items_ex(resolve=False) if k != "defaults"})


def option_schema(group: str, option: str):
    """The dataclass the option is checked by: its own (config.SCHEMAS), else the group's base type; None: open."""
    own = config.SCHEMAS.get(group, {}).get(option)
    base = typing.get_type_hints(config.Config)[group]
    return own or (None if base is typing.Any else base)


def option_node(group: str, option: str) -> DictConfig:
    """The group's node as composing `group=option` gives it: the schema's defaults, then the file's keys."""
    schema_ = option_schema(group, option)
    node = option_file(group, option)
    return node if schema_ is None else OmegaConf.merge(OmegaConf.structured(schema_), node)


def resolved(node: DictConfig) -> dict:
    """`node` as plain values, `???` kept (a required key), interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture
def no_env(monkeypatch):
    """conf/logger/mlflow.yaml's keys default to these variables when set: the tests read the fallbacks."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def default_cfg():
    return deeprun.compose([])


# --- records against the schema -------------------------------------------------------------------------


def test_records_md_tables_are_the_schemas_rendering():
    text = schema.DOC.read_text()
    assert schema.render(text) == text, "docs/records.md's column tables drifted: run deeprun.schema.write_docs()"
    for file in schema.FILE_ROWS:
        assert schema.BEGIN.format(file=file) in text, f"docs/records.md has no generated table for {file}"


def test_schema_is_well_formed():
    for file, row in schema.FILE_ROWS.items():
        names = [c.name for c in row]
        assert len(names) == len(set(names)), f"{file}: a column declared twice"
        assert all(c.kind in schema.KINDS and c.meaning for c in row)
    assert all(c.files and set(c.files) <= {schema.SUMMARY, schema.DIAGNOSIS, schema.RESULTS} for c in schema.ROW)
    assert all(c.files == (schema.EPOCHS,) for c in schema.EPOCH_ROW)
    assert all(c.files == (schema.LAYERS,) for c in schema.LAYER_ROW)
    for file in (schema.DIAGNOSIS_LAYERS, schema.DIAGNOSIS_BLOCKS, schema.DIAGNOSIS_JACOBIAN):
        assert all(c.files == (file,) for c in schema.FILE_ROWS[file])
    # the config columns first, then what deeprun decided (before `status`), then the outcome
    kinds = [c.kind for c in schema.ROW]
    assert kinds.index(schema.OUTCOME) > max(i for i, k in enumerate(kinds) if k == schema.CONFIG)
    assert schema.EXPECT_COLUMNS == tuple(n for n in schema.EXPECT_COLUMNS if schema.kind(n) == schema.OUTCOME)
    assert list(config.ExpectConfig.__dataclass_fields__) == [f"{c}_{side}" for c in schema.EXPECT_COLUMNS
                                                              for side in ("below", "above")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny training runs of four kinds and a diagnosis, in this process: {name: (run directory, config)}."""
    import torch

    from deeprun import api, diagnosis

    root = tmp_path_factory.mktemp("runs")
    cases = {
        "mlp": ["log.loss_at=[2]", "expect.final_train_loss_below=1e9"],
        "classification": ["data=classification", "data.n=64", "optimizer=sgd", "scheduler=step"],
        "resnet": ["model=resnet", "act=leaky_relu", "init=normal"],
        "resnet_cnn": ["model=resnet_cnn", "data=images", "data.n=32", "data.image_size=8", "act=tanh", "width=4"],
    }
    cfgs = {name: tiny(*overrides, "device=cpu") for name, overrides in cases.items()}
    cfgs["diagnosis"] = tiny("device=cpu", "diagnose.draws=2")
    cfgs["diagnosis_resnet"] = tiny("device=cpu", "diagnose.draws=2", "model=resnet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, cfg in cfgs.items():
            (diagnosis.diagnose if name.startswith("diagnosis") else api.run)(cfg, out_dir=root / name)
    finally:
        torch.set_num_threads(threads)
    return {name: (root / name, cfg) for name, cfg in cfgs.items()}


def record(name: str, run: Path) -> dict:
    return json.loads((run / (schema.DIAGNOSIS if name.startswith("diagnosis") else schema.SUMMARY)).read_text())


def test_every_column_of_real_records_is_declared_for_its_file_with_its_kind(runs, default_cfg):
    for name, (run, cfg) in runs.items():
        file = schema.DIAGNOSIS if name.startswith("diagnosis") else schema.SUMMARY
        row = record(name, run)
        for key in row:
            column = schema.column(key, file)
            assert column is not None and file in column.files, f"{name}: {file} column {key!r} is not declared"
        if file == schema.SUMMARY:  # (diagnosis.py writes `threads` before `task`; results.csv orders it)
            assert list(row) == schema.order(row), f"{name}: {file} is not in the schema's order"
        # its config columns are what records.config_row writes, config_key aside (a record column)
        written = [k for k in records.config_row(cfg, row["init"], row["device"]) if k != "config_key"]
        assert [k for k in row if schema.is_config(k)] == written, name
        if file == schema.SUMMARY:
            epochs, layers = pd.read_csv(run / schema.EPOCHS), pd.read_csv(run / schema.LAYERS)
            for file, table in ((schema.EPOCHS, epochs), (schema.LAYERS, layers)):
                for key in table.columns:
                    assert schema.column(key, file) is not None, f"{name}: {file} column {key!r} is not declared"
                assert list(table.columns) == [c.name for c in schema.FILE_ROWS[file] if c.name in table.columns]
        else:  # a diagnosis's tables hold exactly their declared columns, in order (blocks: residual nets only)
            tables = [schema.DIAGNOSIS_LAYERS, schema.DIAGNOSIS_JACOBIAN]
            tables += [schema.DIAGNOSIS_BLOCKS] if cfg.model.name == "resnet" else []
            assert sorted(p.name for p in run.glob("diagnosis_*.csv")) == sorted(tables), name
            for file in tables:
                table = pd.read_csv(run / file)
                assert list(table.columns) == [c.name for c in schema.FILE_ROWS[file]], f"{name}: {file}"
                every_row = {schema.DIAGNOSIS_LAYERS: "grad_norm", schema.DIAGNOSIS_BLOCKS: "avg_var",
                             schema.DIAGNOSIS_JACOBIAN: "singular_value"}[file]  # a number each row has
                assert len(table) > 0 and table[every_row].notna().all(), f"{name}: {file}"
    # config_row writes every declared config column (a family: some of its members), in the schema's order
    written = records.config_row(default_cfg, "kaiming_normal", "cpu")
    assert [k for k in written if not schema.is_config(k)] == ["config_key"]
    assert schema.kind("config_key") == schema.RECORD
    plain = [c.name for c in schema.ROW if c.kind == schema.CONFIG and not c.pattern]
    assert [k for k in written if k in plain] == plain and list(written) == schema.order(written)
    # the runs between them hold every declared column of summary.json and diagnosis.json
    seen = {k for name, (run, _) in runs.items() for k in record(name, run)}
    declared = {c.name for c in schema.ROW if not c.pattern and schema.RESULTS not in c.files}
    assert declared <= seen, f"declared but never written: {sorted(declared - seen)}"


def test_results_csv_follows_the_schemas_order(runs):
    frame = records.results_frame([runs[n][0] for n in ("mlp", "resnet", "diagnosis", "classification")])
    columns = list(frame.columns)
    place = [schema.FILE_ROWS[schema.RESULTS].index(schema.column(c)) for c in columns]
    assert place == sorted(place), columns
    assert columns[-2:] == ["overrides", "run"]
    # a config column only a later row has (the resnet's model.residual_scale) still comes before `status`
    assert columns.index("model.residual_scale") < columns.index("status")
    assert all(schema.is_config(c) for c in columns[:columns.index("config_key")])


def test_the_modules_column_selections_are_schema_columns():
    from deeprun import display, html, loggers, report

    def kinds(names, file=schema.RESULTS):
        assert all(schema.column(n, file) is not None for n in names), names
        return {schema.column(n, file).kind for n in names}

    assert all(schema.SUMMARY in schema.column(k).files for k in display.SUMMARY_KEYS)
    assert kinds(display.KEY_METRICS) == {schema.OUTCOME}
    assert kinds(display.TEXT_COLUMNS) == {schema.OUTCOME, schema.RECORD}
    assert kinds(report.SHARED) == kinds(report.SEEDS) == {schema.CONFIG}
    assert all(schema.DIAGNOSIS in schema.column(k).files for k in html.DIAGNOSIS_COLUMNS)
    assert set(html.PROSE_COLUMNS) <= set(html.DIAGNOSIS_COLUMNS)
    assert kinds(html.WHERE_COLUMNS) == {schema.RECORD}
    assert kinds(loggers.TEXT_COLUMNS) == {schema.OUTCOME}
    kinds(loggers.EPOCH_SKIP, schema.EPOCHS)
    kinds([c for c, _, _ in report.LAYER_FRACTIONS], schema.LAYERS)
    assert records.LAYER_COLUMNS == tuple(c.name for c in schema.LAYER_ROW if c.kind == schema.OUTCOME)
    for metric, own in records.TASK_COLUMNS.items():
        assert set(own) <= set(records.epoch_columns(metric)) and {metric} == set(own) & {"val_r2", "val_accuracy"}
    with pytest.raises(KeyError, match="final_loss"):
        schema.select("final_loss")


def test_value_lists_in_meanings_name_the_values(default_cfg):
    """The schema's meanings list some values (models, norms, statuses, verdicts, activations): they are these."""
    from deeprun import diagnosis, loggers, report

    def named(column: str, file: str = schema.RESULTS) -> set[str]:
        return set(re.findall(r"`([^`]+)`", schema.column(column, file).meaning))

    assert named("model") == set(options("model"))
    assert named("norm") == set(options("norm"))
    assert set(schema.STATUSES) <= named("status") and set(records.FINISHED) <= set(schema.STATUSES)
    assert set(loggers.MLFLOW_STATUS) <= set(schema.STATUSES)
    assert re.findall(r"`([^`]+)`", schema.VERDICT_NAMES) == list(diagnosis.VERDICTS) == list(report.VERDICT_COLOURS)
    dead = [n for n, a in config.ACTIVATION_TABLE.items() if a.dead_frac]
    assert f"({', '.join(dead)})" in schema.column("dead_frac", schema.LAYERS).meaning
    assert [n for n, a in config.ACTIVATION_TABLE.items() if a.tails] == ["tanh", "sigmoid"]
    assert "tanh and sigmoid only" in schema.column("saturated_frac", schema.LAYERS).meaning
    assert set(schema.GROUPS) == set(GROUP_FIELDS) - {"logger"}  # the logger records, it is not in a row


def test_pivot_with_an_outcome_as_axis_names_the_config_columns(runs, capsys):
    from deeprun import report

    with pytest.raises(SystemExit) as exit_:
        report.main([str(runs["mlp"][0]), str(runs["resnet"][0]), "--pivot", "final_train_loss", "depth", "act"])
    assert exit_.value.code == report.USAGE_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("deeprun-report: error: --pivot final_train_loss depth act: ROWS final_train_loss is "
                             "not a config column, VALUE act is a config column; ROWS and COLS are config columns "
                             "(here: "), err[0]
    here = err[0].split("(here: ", 1)[1].split(")", 1)[0].split(", ")
    assert here and all(schema.is_config(c) for c in here) and {"model", "act"} <= set(here), here


# --- one table per concept: the option names -------------------------------------------------------------


def test_option_names_agree_everywhere():
    from torch import nn

    from deeprun import data, diagnosis, meanfield, models, probes, train

    acts = config.ACTIVATION_TABLE
    assert options("act") == sorted(acts) == sorted(config.CHOICES["act.name"]) == sorted(models.ACTIVATIONS)
    assert meanfield.ACTIVATIONS == config.ACTIVATION_NAMES
    for name, a in acts.items():
        assert models.ACTIVATIONS[name] is getattr(nn, a.module) and issubclass(models.ACTIVATIONS[name], nn.Module)
        nn.init.calculate_gain(a.gain, 0.01)  # a name torch knows
        assert a.auto_init in models.INITS and not (a.tails and a.dead_frac) and (a.dead_frac or not a.dies)
        assert (models.ACTIVATIONS[name] in probes.RELU_FAMILY) == a.dead_frac
        assert (name in probes.TAILS) == bool(a.tails)
    assert set(probes.ACTIVATION_MODULES) >= set(models.ACTIVATIONS.values())
    assert diagnosis.DEAD_ACTS == tuple(n for n, a in acts.items() if a.dies)

    builtin_inits = set(config.INIT_NAMES) - {"auto", "torch_default", "checkpoint"}  # these fill no weights
    assert options("init") == sorted(config.INIT_NAMES) == sorted(config.CHOICES["init.name"])
    assert set(models.INITS) == builtin_inits
    assert options("norm") == sorted(config.CHOICES["norm.name"]) == sorted(models.NORMS) == sorted(models.NORMS_2D)
    assert options("optimizer") == sorted(config.CHOICES["optimizer.name"]) == sorted(train.OPTIMIZERS) \
        == sorted(config.SCHEMAS["optimizer"])
    assert set(train.FUSED_ABOVE) <= set(train.OPTIMIZERS)
    assert options("scheduler") == sorted(config.CHOICES["scheduler.name"]) == sorted(train.SCHEDULERS) \
        == sorted({"none", *config.SCHEMAS["scheduler"]})
    assert options("device") == sorted(config.CHOICES["device.name"])
    assert options("logger") == sorted(config.CHOICES["logger.name"]) == sorted({"none", *config.SCHEMAS["logger"]}) \
        == sorted({"none", *config.LOGGER_PACKAGES})
    assert options("model") == sorted({"custom", *config.SCHEMAS["model"]}) == sorted({"custom", *models.MODELS})
    assert set(config.WEIGHT_FORMULAS) == set(models.MODELS) and set(config.IMAGE_MODELS) <= set(models.MODELS)
    assert sorted(config.CHOICES["model.residual_scale"]) == sorted(models.RESIDUAL_SCALES)
    assert options("data") == sorted({"custom", *config.SCHEMAS["data"]}) \
        == sorted({"csv", "custom", *data.SYNTHETIC, *data.REAL})
    assert {n for n, s in config.SCHEMAS["data"].items() if s is config.RealDataConfig} == set(data.REAL)
    assert set(config.IMAGE_DATA) == {"images", *(n for n, (_, _, shape) in data.REAL.items() if shape)}
    assert {task for _, task, _ in data.REAL.values()} <= set(data.TASKS) == set(train.MEMBER_LOSS)
    assert config.CSV_CHOICES["delimiter"] == ("auto", *data.DELIMITERS)
    assert config.CSV_CHOICES["decimal"] == tuple(data.DECIMALS)
    for group, table in config.SCHEMAS.items():  # each option's schema names it
        for name, node in table.items():
            assert OmegaConf.structured(node)._get_node("name")._value() in (name, "???"), (group, name)


# --- defaults --------------------------------------------------------------------------------------------


def test_every_default_set_in_conf_and_in_a_dataclass_agrees(default_cfg, no_env):
    # conf/config.yaml's top-level keys against config.Config's (groups are MISSING there: the defaults list)
    dataclass = leaves(resolved(OmegaConf.structured(config.Config)))
    top = leaves(resolved(OmegaConf.create({k: v for k, v in OmegaConf.load(CONF / "config.yaml").items()
                                            if k not in ("defaults", "hydra")})))
    both = [k for k in top if k in dataclass and dataclass[k] != "???"]
    assert {"depth", "epochs", "lr", "log.loss_at", "diagnose.draws", "objective"} <= set(both)
    assert {k: top[k] for k in both} == {k: dataclass[k] for k in both}
    composed = leaves(resolved(default_cfg))
    assert {k: composed[k] for k in dataclass if dataclass[k] != "???"} == \
        {k: v for k, v in dataclass.items() if v != "???"}
    # every option file's keys against its schema's
    for group in GROUP_FIELDS:
        for option in options(group):
            schema_ = option_schema(group, option)
            if schema_ is None:
                continue
            defaults = resolved(OmegaConf.structured(schema_))
            merged = resolved(option_node(group, option))
            for key in option_file(group, option):
                if key != "name" and defaults.get(key, "???") != "???":  # the name is the option's own
                    assert merged[key] == defaults[key], f"conf/{group}/{option}.yaml: {key}"
    # the default composition is the default options' nodes
    for group in GROUP_FIELDS:
        assert resolved(default_cfg[group]) == resolved(option_node(group, default_cfg[group].name)), group


# --- docs/config.md --------------------------------------------------------------------------------------

DOC = ROOT / "docs" / "config.md"
SPAN = re.compile(r"`([\w.<>@]+): ([^`]*)`")


def doc_sections() -> dict[str, str]:
    parts = re.split(r"^## (.+)$", DOC.read_text(), flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def table_rows(text: str, first: str) -> list[list[str]]:
    """The body rows of every table in `text` whose header's first cell is `first`, as lists of cells."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: ") and header[0] == first:
            rows.append(cells)
    return rows


def prose(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("|"))


def ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def value_of(text: str):
    """A value as docs/config.md writes it (`0.001`, `null`, `[0.9, 0.999]`, `1.0e9`), read as YAML."""
    try:
        return OmegaConf.to_container(OmegaConf.create(f"v: {text}"))["v"]
    except Exception:  # prose in backticks, `deeprun: error: ...`: not a value
        return text


def shown(doc_value, value) -> bool:
    return str(doc_value) == value if isinstance(value, str) else doc_value == value


def spans(text: str) -> dict:
    return {key: value_of(v) for key, v in SPAN.findall(text)}


def test_config_md_has_every_top_level_key_with_its_default(default_cfg):
    rows = table_rows(doc_sections()["Top-level keys"], "key")
    patterns = [(re.compile("|".join(re.escape(k).replace(re.escape("<column>"), ".+") for k in ticked(r[0]))), r)
                for r in rows]
    keys = leaves(resolved(OmegaConf.masked_copy(default_cfg, [k for k in default_cfg if k not in GROUP_FIELDS])))
    assert {"depth", "log.loss_at", "diagnose.rows", "expect.seconds_above"} <= set(keys)
    for key, value in keys.items():
        row = next((r for p, r in patterns if p.fullmatch(key)), None)
        assert row is not None, f"docs/config.md's top-level table lacks {key}"
        assert len(ticked(row[1])) == 1 and shown(value_of(ticked(row[1])[0]), value), (key, row[1], value)
    for pattern, row in patterns:  # no row for a key that is gone
        assert any(pattern.fullmatch(k) for k in keys) or ticked(row[0])[0] in groups(), row[0]


def test_config_md_has_every_group_option_and_key_with_its_default(default_cfg, no_env):
    sections = doc_sections()
    top = table_rows(sections["Top-level keys"], "key")
    for group in groups():
        if group not in sections:  # a group without a section of its own: a top-level row names its options
            row = next((r for r in top if ticked(r[0])[:1] == [group]), None)
            assert row is not None, f"docs/config.md: no section and no top-level row for the group {group}"
            named = {t.split("=", 1)[-1] for t in ticked(" ".join(row)) if "=" not in t or t.startswith(f"{group}=")}
            assert set(options(group)) <= named, (group, options(group), row)
            continue
        rows = table_rows(sections[group], "option")
        named = {o: r for r in rows for o in ticked(r[0])}
        assert set(named) == set(options(group)), f"docs/config.md's {group} table: {sorted(named)}"
        common = spans(prose(sections[group]))
        for option in options(group):
            row = named[option]
            if group in GROUP_FIELDS and default_cfg[group].name == option:
                assert "(default" in row[0], f"{group}: the default {option} is not marked"
            own = spans(" ".join(row[1:]))
            node = resolved(option_node(group, option))
            for key, value in node.items():
                if key == "name":
                    continue
                if value == "???":  # required: named
                    assert f"`{key}`" in row[1], (group, option, key)
                    continue
                doc = own.get(key, common.get(key, "missing"))
                assert shown(doc, value), f"docs/config.md, {group}={option}: {key} is {value!r}, shown {doc!r}"
            if group == "act":
                a = config.ACTIVATION_TABLE[option]
                probe = "`dead_frac`" if a.dead_frac else "`saturated_frac`" if a.tails else "none"
                assert row[2:] == [f"`nn.{a.module}`", f"`{a.gain}`", f"`{a.auto_init}`", probe], row
