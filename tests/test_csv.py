"""data=csv on awkward files: each one trains, or ends in one line naming the key, the file or the column.

Most tests build the data in-process (``deeprun.build_data``) from a small file in
tmp_path, the working directory, and check the ConfigError's exact text or the
tensors. A few run the `deeprun` console script on representative bad files for
what only the CLI shows: exit status 2, one line on stderr, no traceback, and no
run records left behind. tests/test_errors.py holds the older CSV cases (missing
file, empty file, unknown target, a text column, an empty cell, one class).
"""

from __future__ import annotations

import math

import pytest
import torch

import deeprun
from deeprun import data as data_module
from deeprun.config import ConfigError

from conftest import compose

SMALL = ["device=cpu", "epochs=2", "depth=2", "width=8", "log.progress=false", "data=csv"]
HOUSES = "area,rooms,price\n50,1,100\n60,2,130\n70,3,160\n80,2,170\n90,4,200\n"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own directory, so data.path (and the error text) is just the file name."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str | bytes, name: str = "t.csv") -> str:
    with open(name, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return name


def cfg(text: str | bytes, *overrides: str, target: str = "price"):
    return compose([*SMALL, f"data.path={write(text)}", f"data.target={target}", *overrides])


def build(text: str | bytes, *overrides: str, target: str = "price") -> data_module.Data:
    return deeprun.build_data(cfg(text, *overrides, target=target))


def error(text: str | bytes, *overrides: str, target: str = "price") -> str:
    with pytest.raises(ConfigError) as info:
        build(text, *overrides, target=target)
    return str(info.value)


# --- the file's shape ------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"", b"\n\n\n", b"\xef\xbb\xbf"], ids=["0-bytes", "blank-lines", "bom-only"])
def test_empty_file(text):
    assert error(text) == "data.path='t.csv': the file is empty"


def test_header_only():
    assert error("area,rooms,price\n") == "data.path='t.csv': 0 data row(s); at least 2 are needed"


def test_one_data_row():
    assert error("area,rooms,price\n50,1,100\n") == "data.path='t.csv': 1 data row(s); at least 2 are needed"


def test_duplicate_column_names():
    # pandas would call the second one area.1; data.target=area or data.features=[area] would be a guess
    assert error("area,area,price\n50,1,100\n60,2,130\n70,3,160\n") == (
        "data.path='t.csv': column 'area' appears 2 times in the header; data.target and data.features "
        "pick columns by name, so names must be unique")


def test_an_unnamed_index_column_is_not_taken_as_a_feature():
    # what pandas' DataFrame.to_csv writes by default: the row index under an empty name
    indexed = ",area,rooms,price\n0,50,1,100\n1,60,2,130\n2,70,3,160\n3,80,3,170\n"
    assert error(indexed) == (
        "data.path='t.csv': column 1 has no name in the header (a row index, as pandas' to_csv writes by default?); "
        "save the file with index=False, give the column a name to use it as a feature, or list the features "
        "with data.features=[...]")
    assert build(indexed, "data.features=[area,rooms]").n_in == 2  # listed features leave it out
    assert build(indexed.replace(",area", "id,area", 1)).n_in == 3  # named: the user's choice


def test_ragged_row_names_the_line():
    assert error("area,rooms,price\n50,1,100\n60,2,130,7\n70,3,160\n") == (
        "data.path='t.csv': not a readable CSV file (Error tokenizing data. C error: Expected 3 fields in line 3, saw 4)")


def test_not_utf8():
    assert error("city,area,price\nK\xf8ge,50,100\nOslo,60,130\n".encode("latin-1")) == (
        "data.path='t.csv': not UTF-8 text (invalid start byte at byte 17); save it as UTF-8")


def test_feature_also_target_or_twice():
    assert error(HOUSES, "data.features=[area,price]") == "data.features: column 'price' is data.target too"
    assert error(HOUSES, "data.features=[area,rooms,area]") == "data.features: column 'area' is listed twice"


def test_integer_column_name_as_target():
    data = build("1999,2020\n1,2\n2,4.5\n3,6\n4,8\n", target="2020")
    assert data.task == "regression" and data.n_in == 1


# --- delimiters and the byte-order mark -----------------------------------------------------


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_delimiter_detected(sep):
    data = build(HOUSES.replace(",", sep), "data.task=regression")
    assert (data.task, data.n_in, len(data.x_train) + len(data.x_val)) == ("regression", 2, 5)


def test_semicolon_with_decimal_commas_in_some_rows(capsys):
    # counting commas in the header alone would not do: comma splits some rows into 3, semicolon all into 2
    text = "area;price\n50,5;100\n60;130\n70;160\n"
    assert data_module._peek(write(text), "auto")[0] == ";"
    # read with ';', 50,5 is a number with a decimal comma: read as one, and said so in one line
    data = build(text, "data.task=regression", "data.scale_target=false")
    low, mid, high = sorted(torch.cat([data.x_train, data.x_val]).flatten().tolist())  # numbers, standardised:
    assert (mid - low) / (high - mid) == pytest.approx((60 - 50.5) / (70 - 60), rel=1e-5)  # 50,5 read as 50.5
    assert capsys.readouterr().err == (
        "deeprun: data.path='t.csv': read 1 column(s) with decimal commas ('area'; e.g. 50,5 as 50.5); "
        "set data.decimal=comma to say so\n")


def test_decimal_comma_reads_numbers_and_leaves_comma_out_of_auto():
    text = "area;rooms;price\n50,5;1;100\n60;2;130,25\n70,75;3;160\n80;2;170\n"
    data = build(text, "data.decimal=comma", "data.scale_target=false", target="area")
    assert sorted(torch.cat([data.y_train, data.y_val]).flatten().tolist()) == [50.5, 60.0, 70.75, 80.0]
    assert data.n_in == 2  # rooms and price, both numbers
    # split at commas, every line of this file has 3 fields, at semicolons 2: auto would take comma,
    # but with decimal commas the comma is inside the numbers
    ambiguous = write("p,q;r,s\n1,5;2,5\n3,5;4,5\n")
    assert data_module._peek(ambiguous, "auto", "point")[0] == ","
    assert data_module._peek(ambiguous, "auto", "comma")[0] == ";"


def test_decimal_comma_with_comma_delimiter_is_one_line(main):
    write(HOUSES)
    proc = main("data=csv", "data.path=t.csv", "data.target=price", "data.decimal=comma", "data.delimiter=comma")
    assert proc.code == 2
    assert proc.err.strip() == ("deeprun: error: data.delimiter=comma: with data.decimal=comma it would split 1,5 "
                                   "in two; use semicolon, tab, pipe or auto")


def test_comma_file_with_semicolons_in_text():
    text = "area,note,price\n50,a;b,100\n60,c;d,130\n70,e;f,160\n80,\"g;h\",170\n"
    data = build(text, "data.features=[area]", "data.task=regression")
    assert data.n_in == 1 and len(data.x_train) + len(data.x_val) == 4


def test_delimiter_given_is_used():
    semicolons = HOUSES.replace(",", ";")
    assert build(semicolons, "data.delimiter=semicolon", "data.task=regression").n_in == 2
    assert error(semicolons, "data.delimiter=comma") == (
        "data.target: column 'price' not in t.csv; columns: area;rooms;price")


def test_bom_is_not_part_of_the_first_name():
    path = write("\ufeffarea,rooms,price\n50,1,100\n60,2,130\n70,3,160\n".encode("utf-8"))
    table = data_module.read_csv(compose([*SMALL, f"data.path={path}", "data.target=area"]).data)
    assert list(table.y.columns) == ["area"] and list(table.x.columns) == ["rooms", "price"]


# --- text columns ------------------------------------------------------------------------------

SHOPS = ("area,city,kind,price\n50,Oslo,flat,100\n60,Bergen,house,130\n70,Oslo,flat,160\n"
         "80,Tromso,house,170\n90,Bergen,flat,200\n100,Oslo,house,230\n")


def test_text_columns_are_an_error_by_default():
    assert error(SHOPS) == (
        "data.features: columns 'city', 'kind' of t.csv are not numeric (e.g. 'Oslo' in 'city'); "
        "one-hot encode with data.categorical=onehot, or list numeric columns with data.features=[...]")


def test_the_example_is_the_value_that_is_not_a_number():
    assert "(e.g. 'n.a.')" in error("area,rooms,price\n50,1,100\n60,n.a.,130\n70,3,160\n")


def test_onehot_columns_in_place_and_kept_0_1():
    table = data_module.read_csv(cfg(SHOPS, "data.categorical=onehot").data)
    assert list(table.x.columns) == ["area", "city=Bergen", "city=Oslo", "city=Tromso", "kind=flat", "kind=house"]
    assert table.onehot == list(table.x.columns[1:])
    data = build(SHOPS, "data.categorical=onehot", "data.task=regression")
    x = torch.cat([data.x_train, data.x_val])
    assert data.n_in == 6
    assert set(x[:, 1:].unique().tolist()) == {0.0, 1.0}  # not standardised
    assert torch.equal(x[:, 1:].sum(1), torch.full((6,), 2.0))  # one value per text column
    assert abs(data.x_train[:, 0].mean().item()) < 1e-5  # the number column is


def test_onehot_refuses_an_id_column(monkeypatch):
    monkeypatch.setattr(data_module, "MAX_CATEGORIES", 3)
    text = "name,area,price\n" + "".join(f"n{i},{i},{i * 2}\n" for i in range(5))
    assert error(text, "data.categorical=onehot") == (
        "data.categorical=onehot: column 'name' of t.csv has 5 distinct values (at most 3: one column each); "
        "leave it out with data.features=[...]")


# --- missing and non-finite cells --------------------------------------------------------------

HOLES = ("area,rooms,note,price\n50,1,a,100\n60,,b,130\n70,3,,160\n80,inf,d,\n90,4,e,200\n"
         "100,5,f,230\n110,nan,g,260\n120,1e39,h,290\n130,6,i,-inf\n140,7,j,320\n150,8,k,nan\n")


def test_missing_cells_name_rows_and_columns():
    # the note column's hole counts only when note is in use
    assert error(HOLES, "data.features=[area,rooms]") == (
        "data.path='t.csv': missing or non-finite values (empty, nan, inf, beyond float32) in 6 data row(s): "
        "2, 4, 7, 8, 9 ... (1-based, after the header), column(s): rooms, price; data.missing=drop leaves such rows out")


def test_missing_drop_keeps_the_other_rows():
    data = build(HOLES, "data.features=[area,rooms]", "data.missing=drop", "data.task=regression")
    x = torch.cat([data.x_train, data.x_val])
    assert (data.rows_dropped, len(x)) == (6, 5)  # rows 2, 4, 7, 8, 9, 11 go; row 3's hole is in note
    assert torch.isfinite(x).all()


def test_missing_drop_text_cells_before_onehot():
    data = build(HOLES, "data.missing=drop", "data.categorical=onehot", "data.task=regression")
    assert (data.rows_dropped, data.n_in) == (7, 2 + 4)  # row 3 goes too; notes a, e, f, j are left


def test_missing_drop_needs_two_rows_left():
    text = "area,price\n50,\n60,\n,160\n80,170\n"
    assert error(text, "data.missing=drop") == (
        "data.path='t.csv': 1 data row(s) left after data.missing=drop dropped 3; at least 2 are needed")


# --- constant columns and one-class targets ----------------------------------------------------


def test_constant_column_becomes_zero_and_trains():
    text = "area,floor,price\n" + "".join(f"{50 + 7 * i},3,{100 + 13 * i % 40}.5\n" for i in range(20))
    data = build(text)
    assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_val).all()
    assert data.x_train[:, 1].eq(0).all() and data.x_val[:, 1].eq(0).all()
    result = deeprun.run(cfg(text))
    assert result.summary["status"] == "completed" and math.isfinite(result.summary["final_train_loss"])


def test_constant_regression_target_trains_with_r2_nan():
    text = "area,rooms,price\n" + "".join(f"{50 + i},{i % 3},2.5\n" for i in range(10))
    result = deeprun.run(cfg(text))
    assert result.summary["status"] == "completed" and result.summary["task"] == "regression"
    assert math.isnan(result.summary["val_r2"]) and math.isfinite(result.summary["final_val_loss"])


def test_integer_target_with_one_value_is_one_class():
    # task=auto takes few integers as classes; one class leaves nothing to learn
    assert error("area,label\n1,7\n2,7\n3,7\n", target="label") == (
        "data.target='label': one class only (7); classification needs two or more")


def test_errors_about_several_target_columns_name_them_all():
    text = "area,a,b\n" + "".join(f"{i},{i % 2},{'xy'[i % 2]}\n" for i in range(10))
    assert error(text, target="[a,b]") == (
        "data.target=['a', 'b']: column 'b' is not numeric; regression needs numbers (or set data.task=classification)")
    assert error(text, "data.task=classification", target="[a,b]") == (
        "data.target=['a', 'b']: classification takes one target column")


def test_training_split_with_one_class():
    n, (train, val) = 5, data_module.split(5, 0.2, 0)
    labels = ["a"] * n
    labels[int(val[0])] = "b"  # the only b falls in the validation split
    text = "area,label\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels))
    assert error(text, target="label") == (
        "data.target='label': the training split holds one class only ('a'; the others fell in the validation "
        "split); add rows, or try another data.seed")


# --- the new keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key, allowed", [("missing", "error, drop"), ("categorical", "error, onehot"),
                                          ("delimiter", "auto, comma, semicolon, tab, pipe")])
def test_new_keys_take_their_choices_only(key, allowed):
    with pytest.raises(ConfigError) as info:
        cfg(HOUSES, f"data.{key}=';'")
    assert str(info.value) == f"data.{key}=';': must be one of: {allowed}"


def test_everything_at_once_trains():
    """BOM, semicolons, a text column, a hole: the run trains on 1 + 3 one-hot features."""
    text = "\ufeffarea;city;price\n" + "".join(f"{50 + i};{'ABC'[i % 3]};{100 + 3 * i}.5\n" for i in range(12))
    text += "62;;140.5\n"
    c = cfg(text.encode(), "data.missing=drop", "data.categorical=onehot")
    data = deeprun.build_data(c)
    assert (data.n_in, data.rows_dropped, len(data.x_train) + len(data.x_val)) == (4, 1, 12)
    result = deeprun.run(c)
    assert result.summary["status"] == "completed"
    assert result.summary["params"] == (4 * 8 + 8) + (8 * 8 + 8) + (8 + 1)  # depth 2, width 8: 4 inputs
    assert result.summary["rows_dropped"] == 1  # the run's record says what data.missing=drop left out


# --- data=custom: the same checks, CSV keys aside ----------------------------------------------

SETS = '''import numpy as np

def holes(**kw):
    x = np.ones((6, 2)); x[4, 1] = np.nan
    return x, np.arange(6.0)

def text(**kw):
    return np.array([["a", "b"]] * 4), np.arange(4.0)

def ragged(**kw):
    return np.ones((4, 2)), np.arange(5.0)

def fine(missing="kept", max_rows=None):  # a user key named like a CSV key is the user's
    assert missing == "kept" and max_rows is None
    return np.random.default_rng(0).normal(size=(40, 3)), np.arange(40.0)
'''


@pytest.mark.parametrize("fn, says", [
    ("holes", "data._target_='csv_sets.holes': missing or non-finite values (nan, inf, beyond float32) in 1 row(s): "
              "4 (0-based, as x[i] and y[i]), column(s): x[:, 1]"),
    ("text", "data._target_='csv_sets.text': x holds <U1 values, not numbers; encode them before returning x"),
    ("ragged", "data._target_='csv_sets.ragged': returned x of shape (4, 2) and y of shape (5, 1); x must be "
               "(N, n_in) or (N,), y (N, n_out) or (N,), with the same N"),
])
def test_custom_data_errors(in_tmp, fn, says):
    (in_tmp / "csv_sets.py").write_text(SETS)
    with pytest.raises(ConfigError) as info:
        deeprun.build_data(compose(["device=cpu", "data=custom", f"data._target_=csv_sets.{fn}"]))
    assert str(info.value) == says


def test_custom_data_gets_its_own_keys_only(in_tmp):
    (in_tmp / "csv_sets.py").write_text(SETS)
    c = compose(["device=cpu", "data=custom", "data._target_=csv_sets.fine", "+data.missing=kept", "debug=smoke"])
    data = deeprun.build_data(c)
    assert (data.task, data.n_in, data.rows_dropped) == ("regression", 3, 0)


# --- through the CLI: exit 2, one line, no traceback, no records ---------------------------------

BAD = {
    "duplicate-names": ("x,x,price\n1,2,3\n4,5,6\n7,8,9\n", ["data.target=price"], "data.path='t.csv': column 'x' appears 2 times"),
    "header-only": ("area,rooms,price\n", ["data.target=price"], "data.path='t.csv': 0 data row(s); at least 2 are needed"),
    "inf-cell": ("area,rooms,price\n1,2,3\n4,inf,6\n7,8,9\n", ["data.target=price"],
                 "data.path='t.csv': missing or non-finite values (empty, nan, inf, beyond float32) in 1 data row(s): 2"),
    "one-class-in-training": ("area,label\n0,a\n1,a\n2,a\n3,a\n4,b\n", ["data.target=label", "data.val_fraction=0.2"],
                              None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_file(in_tmp, main, case, one_thread):
    text, args, says = BAD[case]
    if case == "one-class-in-training":  # put the only b where the seeded split sends validation rows
        _, val = data_module.split(5, 0.2, 0)
        rows = ["a"] * 5
        rows[int(val[0])] = "b"
        text = "area,label\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rows))
        says = "data.target='label': the training split holds one class only ('a'"
    write(text)
    p = main("data=csv", "data.path=t.csv", *args, "epochs=1", "log.progress=false")
    shown = f"exit {p.code}\n--- stdout\n{p.out}--- stderr\n{p.err}"
    assert p.code == 2, shown
    assert "Traceback" not in p.out + p.err and p.out == "", shown
    lines = p.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"deeprun: error: {says}"), shown
    assert sorted(q.name for q in in_tmp.rglob("*") if q.is_file()) == ["t.csv"], "run records left behind"


# --- numbers that only look like text, labels that are numbers, several problems at once -------------------


def test_decimal_comma_target_is_a_regression_not_classes(capsys):
    # a semicolon file saved with decimal commas, read with the default data.decimal=point
    text = "area;rooms;price\n" + "".join(f"{50 + i},5;{i % 4};{3 + i / 100:.3f}\n".replace(".", ",")
                                          for i in range(40))
    data = build(text)
    assert (data.task, data.n_classes, data.n_in) == ("regression", None, 2)
    assert "read 2 column(s) with decimal commas ('area', 'price'; e.g. 50,5 as 50.5)" in capsys.readouterr().err


def test_decimal_comma_with_thousands_points_stays_text_and_never_suggests_onehot_for_numbers():
    text = "area;price\n1.234,5;100\n60,5;130\n70;160\n"  # 1.234,5: ambiguous, the column stays text
    assert "data.categorical=onehot" in error(text)
    # in a comma file a quoted 50,5 is a number with a decimal comma: the hint says so, not one-hot
    says = error('area,price\n"50,5",100\n"60,5",130\n"70,5",160\n')
    assert "decimal comma? set data.decimal=comma" in says and "onehot" not in says


LABELS = "area,label\n" + "".join(f"{i},L{i % 30}\n" for i in range(120))  # 30 text labels, 4 rows each


def test_too_many_text_classes_is_one_error_naming_both_ways_out():
    assert error(LABELS, target="label") == (
        "data.target='label': column 'label' has 30 distinct values to take as classes (more than "
        "data.max_classes=20); set data.task=regression if they are numbers, or data.task=classification "
        "data.max_classes=30 to train 30 classes")
    data = build(LABELS, "data.task=classification", "data.max_classes=30", target="label")
    assert (data.task, data.n_classes, data.n_out) == ("multiclass", 30, 30)
    assert build(LABELS, "data.max_classes=30", target="label").n_classes == 30  # auto: max_classes allows it


def test_text_labels_nearly_one_per_row_are_an_error():
    text = "area,label\n" + "".join(f"{i},L{i % 10}\n" for i in range(20))  # 2 rows per class
    assert "has 10 distinct values to take as classes (2.0 rows per class on average)" in error(text, target="label")
    assert build(text, "data.task=classification", target="label").n_classes == 10  # insisted on: trains


def test_integer_target_with_values_nearly_one_per_row_is_a_regression():
    text = "area,price\n" + "".join(f"{i},{100 + i}\n" for i in range(10))
    assert build(text).task == "regression"


def test_several_problems_in_one_message():
    says = error(HOLES.replace("note", "city"))  # holes and a text column
    parts = says.split("; ")
    assert "\n" not in says
    assert says.startswith("data.path='t.csv': missing or non-finite values")
    assert "data.features: column 'city' of t.csv is not numeric (e.g. 'a')" in says
    assert "data.missing=drop leaves such rows out" in parts[0] + parts[1] and len(parts) >= 3


# --- regression targets in their own units ---------------------------------------------------------


def test_scale_target_standardises_with_the_train_split_and_records_units():
    text = "area,rooms,price\n" + "".join(f"{50 + i},{i % 3},{300000 + 1000 * i}\n" for i in range(30))
    data = build(text)
    assert data.loss_units == "standardised" and data.n_classes is None
    (mean,), (std,) = data.y_scale
    assert abs(data.y_train.mean().item()) < 1e-5 and abs(data.y_train.std().item() - 1) < 1e-5
    assert 3e5 < mean < 3.3e5 and 5e3 < std < 1e4
    raw = build(text, "data.scale_target=false")
    assert raw.y_scale is None and raw.loss_units == "target" and raw.y_train.min() >= 3e5
    assert torch.allclose(data.y_val * std + mean, raw.y_val)
    result = deeprun.run(cfg(text, "epochs=3"))
    assert result.summary["loss_units"] == "standardised" and result.summary["n_classes"] is None
    assert list(result.epochs.columns) == ["epoch", "train_loss", "val_loss", "val_r2", "val_rmse", "lr", "seconds"]
    last = result.epochs.iloc[-1]  # one target column: val_rmse = sqrt(val_loss) * train std
    assert math.isclose(last.val_rmse, math.sqrt(last.val_loss) * std, rel_tol=1e-5)
    assert result.summary["val_rmse"] == last.val_rmse


def test_scale_target_must_be_a_bool():
    with pytest.raises(ConfigError) as info:
        deeprun.compose(["data=custom", "data._target_=a.b", "data.scale_target=maybe"])
    assert str(info.value) == "data.scale_target='maybe': must be true or false"


@pytest.mark.slow
def test_house_prices_train_in_standardised_units_through_the_cli(tmp_path, main, one_thread):
    """price = 3e5 + 5e4 * (a linear mix of 4 features) + noise: the defaults fit it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=gen)
    price = 3e5 + 5e4 * (x @ torch.tensor([0.5, -0.3, 0.8, 0.2])) + 1e3 * torch.randn(500, generator=gen)
    rows = "".join(",".join(f"{v:.4f}" for v in r) + f",{p:.2f}\n" for r, p in zip(x.tolist(), price.tolist()))
    write("a,b,c,d,price\n" + rows)
    proc = main("data=csv", "data.path=t.csv", "data.target=price", "log.progress=false", "device=cpu",
                "hydra.run.dir=run")
    assert proc.code == 0, proc.err
    summary = __import__("json").loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_r2"] >= 0.9 and summary["loss_units"] == "standardised"
    assert summary["final_train_loss"] < 0.2 and summary["val_rmse"] < 2e4
    old = deeprun.run(cfg(open("t.csv").read(), "data.scale_target=false", "epochs=3")).summary
    assert old["loss_units"] == "target" and old["final_train_loss"] > 1e9  # the target's own units
