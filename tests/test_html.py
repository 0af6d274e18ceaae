"""deeprun-report --html: one self-contained page. Fast checks on synthetic records (a 300-run sweep
written directly as summary.json, epochs.csv and layers.csv: the page stays under 3 MB and loads nothing
from the network) and on the missing extra; a slow one opens the page of a real small sweep and a
diagnosis sweep in headless Chromium (Debian's chromium and chromium-driver) through Selenium."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import background, run_cli, run_python, together

from deeprun import report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MAX_BYTES = 3 * 1024 * 1024
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1366,900")

# --- synthetic records: a 300-run sweep written directly, in a second or two -------------------------------

DEPTHS, ACTS, LRS, SEEDS = (2, 4, 8, 16, 32), ("relu", "tanh", "sigmoid"), (1e-3, 1e-2, 1e-1, 1.0), range(5)


def synthetic_sweep(root: Path, epochs: int = 400, every: int = 10) -> Path:
    """5 depths x 3 activations x 4 learning rates x 5 seeds = 300 runs of `epochs` epochs, layers probed
    every `every`: the records' shape as deeprun writes them, the numbers random (so they compress no
    better than real ones)."""
    rng = np.random.default_rng(0)
    sweep = root / "sweep300"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - depth=2,4,8,16,32\n"
                                         "    - act=relu,tanh,sigmoid\n    - lr=0.001,0.01,0.1,1\n    - seed=0,1,2,3,4\n"
                                         "  sweeper:\n    params: null\n  runtime:\n    cwd: /somewhere\n")
    job = 0
    for depth in DEPTHS:
        for act in ACTS:
            for lr in LRS:
                for seed in SEEDS:
                    write_synthetic_run(sweep / f"{job}_act={act},depth={depth},lr={lr},seed={seed}", rng, depth,
                                        act, lr, seed, epochs, every)
                    job += 1
    return sweep


def write_synthetic_run(run: Path, rng, depth: int, act: str, lr: float, seed: int, epochs: int, every: int) -> None:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- depth={depth}\n- act={act}\n- lr={lr}\n- seed={seed}\n")
    e = np.arange(epochs + 1)
    train = (2.0 * np.exp(-e * lr * 5 / (1 + depth / 8)) + 0.05) * np.exp(rng.normal(0, 0.05, len(e)))
    val = train * np.exp(rng.normal(0.1, 0.05, len(e)))
    diverged = lr == 1.0 and depth >= 16
    status = "diverged" if diverged else "completed"
    if diverged:  # blows up, then NaN from epoch 40 on
        train[20:] *= np.exp(np.arange(len(e) - 20))
        train[40:], val[40:] = np.nan, np.nan
    epochs_table = pd.DataFrame({"epoch": e, "train_loss": train, "val_loss": val, "val_r2": 1 - val,
                                 "lr": lr, "seconds": 0.01})
    logged = [x for x in e if x % every == 0 or x == epochs]
    n_layers = depth + 1
    rows = []
    for at in logged:
        decay = 0.25 if act == "sigmoid" else 0.9
        grads = decay ** (depth - np.arange(n_layers)) * np.exp(rng.normal(0, 0.2, n_layers)) / (1 + at / 100)
        for layer in range(n_layers):
            head = layer == depth
            rows.append((at, layer, "head" if head else f"fc{layer}", grads[layer], rng.uniform(1, 5),
                         None if at == 0 else rng.uniform(0, 0.1), None if head else rng.normal(0.5, 0.1),
                         None if head else rng.uniform(0.1, 1),
                         None if head or act != "relu" else round(float(rng.uniform(0, 0.4)), 3),
                         None if head or act == "relu" else round(float(rng.uniform(0, 0.6)), 3)))
    layers = pd.DataFrame(rows, columns=["epoch", "layer", "name", "grad_norm", "weight_norm", "update_ratio",
                                         "act_mean", "act_std", "dead_frac", "saturated_frac"])
    epochs_table.to_csv(run / "epochs.csv", index=False, float_format="%.8g")
    layers.to_csv(run / "layers.csv", index=False, float_format="%.8g")
    last = epochs_table[np.isfinite(epochs_table["train_loss"])].iloc[-1]
    summary = {"model": "mlp", "depth": depth, "width": 32, "act": act, "init": "kaiming_normal" if act == "relu"
               else "xavier_uniform", "norm": "none", "norm_position": "pre", "optimizer": "sgd", "scheduler": "none",
               "lr": lr, "batch_size": None, "epochs": epochs, "dropout": 0.0, "grad_clip": None, "data": "regression",
               "seed": seed, "device": "cpu", "config_key": f"{depth}{act}{lr}{seed}", "data.n": 400,
               "task": "regression", "n_classes": None, "loss_units": "target", "params": 1000 * depth,
               "rows_dropped": 0, "threads": 1, "status": status, "diverged_epoch": 40 if diverged else None,
               "final_train_loss": float(last["train_loss"]), "final_val_loss": float(last["val_loss"]),
               "best_val_loss": float(np.nanmin(val[1:])), "val_r2": float(1 - last["val_loss"]),
               "grad_norm_first": float(layers["grad_norm"].iloc[-n_layers]),
               "grad_norm_last": float(layers["grad_norm"].iloc[-2]), "grad_ratio": 0.5,
               "grad_norm_first@init": float(layers["grad_norm"].iloc[0]), "grad_ratio@init": 0.5,
               "dead_frac_max": 0.1, "saturated_frac_max": None,
               "verdict@init": "vanishing" if act == "sigmoid" and depth >= 8 else "healthy", "seconds": 1.0,
               "error": None}
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return synthetic_sweep(tmp_path_factory.mktemp("html300"))


def page_data(text: str) -> dict:
    """The page's gzip-compressed records, as the browser's script opens them."""
    packed = re.search(r'<script type="application/octet-stream" id="deeprun-data"[^>]*>([^<]*)</script>', text)
    return json.loads(gzip.decompress(base64.b64decode(packed.group(1))))


@pytest.mark.slow
def test_a_300_run_sweep_fits_in_3_mb_and_needs_no_network(big, tmp_path, capsys):
    out = tmp_path / "report.html"
    report.main([str(big), "--html", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    size = out.stat().st_size
    assert size <= MAX_BYTES, f"{size / 1e6:.2f} MB"
    text = out.read_text(encoding="utf-8")
    # self-contained: nothing loaded from elsewhere, every script and style inline
    assert not re.search(r"""<script[^>]*\ssrc\s*=""", text, re.I)
    assert not re.search(r"""<link[^>]*\shref\s*=\s*["']?(https?:)?//""", text, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", text, re.I)
    assert "@import" not in text and "<iframe" not in text
    header = text[text.index("<header>"):text.index("</header>")]
    assert "<code>deeprun -m depth=2,4,8,16,32 act=relu,tanh,sigmoid lr=0.001,0.01,0.1,1 seed=0,1,2,3,4</code>" in header
    assert "270 completed" in header and "30 diverged" in header and "60 vanishing" in header
    data = page_data(text)
    assert len(data["runs"]) == 300 and text.count('<tr id="row-') == 300
    # curves thinned to at most 200 epochs, the first and last kept; heatmaps within their budget
    curves = [c for c in data["curves"] if c]
    assert len(curves) == 300 and max(len(c[0]) for c in curves) == 200
    assert all(c[0][0] == 0 for c in curves) and max(c[0][-1] for c in curves) == 400
    cells = sum(len(h[0]) * len(h[2]) for h in data["heat"] if h)
    assert cells <= 130_000
    specs = json.loads(re.search(r'<script type="application/json" id="deeprun-specs">(.*?)</script>', text).group(1))
    assert {"loss", "grad", "heat_grad_norm", "heat_dead_frac", "heat_saturated_frac"} <= set(specs)
    assert not any(k.startswith("pivot_") for k in specs)  # four swept keys besides the seed: no default pivot


@pytest.mark.slow
def test_default_pivot_is_the_two_swept_keys_against_the_objective(big, tmp_path, capsys):
    out = tmp_path / "r.html"
    report.main([str(big), "--filter", "lr=0.01", "--html", str(out)])
    text = out.read_text(encoding="utf-8")
    specs = json.loads(re.search(r'id="deeprun-specs">(.*?)</script>', text).group(1))
    pivots = [s for k, s in specs.items() if k.startswith("pivot_")]
    assert len(pivots) == 1 and pivots[0]["title"].startswith("best_val_loss by depth and act (mean ± std over 5")
    assert "the 75 of 300 that match lr=0.01" in text


def test_without_the_extra_html_is_one_line_and_status_2(monkeypatch, capsys, tmp_path):
    rng = np.random.default_rng(3)
    for seed in (0, 1):  # a small sweep of the same records (the 300-run one is the slow tests')
        write_synthetic_run(tmp_path / "sweep" / f"relu-{seed}", rng, 4, "relu", 0.01, seed, 30, 5)
    monkeypatch.setitem(sys.modules, "altair", None)  # import altair now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "sweep"), "--html", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("deeprun-report: error: --html needs altair") and "pip install 'deeprun[html]'" in err
    assert not (tmp_path / "r.html").exists()


@background
def python_api(d: Path):
    """deeprun.results and deeprun.report in a fresh interpreter, on four synthetic runs."""
    rng = np.random.default_rng(1)
    for act in ("relu", "tanh"):
        for seed in (0, 1):
            write_synthetic_run(d / "sweep" / f"{act}-{seed}", rng, 4, act, 0.01, seed, 30, 5)
    code = (f"import sys, deeprun; t = deeprun.results({str(d / 'sweep')!r}); "
            f"f = deeprun.report({str(d / 'sweep')!r}, filters=['act=tanh'], html={str(d / 'a.html')!r}, "
            f"pivot=('act', 'seed', 'final_train_loss'), plot={str(d / 'png')!r}); "
            "print(len(t), len(f), type(t).__name__, callable(deeprun.report), 'torch' in sys.modules)")
    return run_python(code, timeout=120)


def test_python_api_results_and_report(python_api):
    """deeprun.results and deeprun.report in a fresh interpreter: the table, the page and the PNGs; no torch."""
    d, done = python_api.dir, python_api.result
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "4 2 DataFrame True False"
    assert "seed=0" in (d / "a.html").read_text(encoding="utf-8")
    names = {p.name for p in (d / "png").iterdir()}
    # two runs: a few, so each gets its layer x epoch heatmaps
    assert names == {"loss.png", "grad_norm.png", "pivot_final_train_loss_by_act_and_seed.png",
                     "layers_tanh-0.png", "layers_tanh-1.png"}


@pytest.mark.slow  # the first page built: altair and vl-convert load
def test_page_escapes_what_the_records_say(tmp_path):
    """A run directory or a value with markup in it is text on the page, never markup."""
    rng = np.random.default_rng(2)
    write_synthetic_run(tmp_path / "s" / "<b>x</b>", rng, 2, "relu", 0.01, 0, 10, 5)
    frame = report.results(tmp_path / "s")
    from deeprun import html

    text = html.build(frame, paths=[str(tmp_path / "s")], command="deeprun-report s --html r.html")
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert text.count("</script>") == text.count("<script")


# --- in a real browser ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict:
    """A small real sweep (2 depths x 2 learning rates, one of which diverges, x 2 seeds; 6 epochs) and a
    diagnosis sweep (2 depths x 2 activations), made by the console scripts side by side; then their page."""
    root = tmp_path_factory.mktemp("html-real")
    tiny = ["width=8", "data.n=64", "epochs=6", "optimizer=sgd", "log.progress=false"]
    env = {"OMP_NUM_THREADS": "1"}
    commands = [
        ("deeprun", ["-m", "depth=2,5", "lr=0.05,1e6", "seed=0,1", *tiny, "hydra.sweep.dir=sweep"]),
        ("deeprun-diagnose", ["-m", "depth=2,6", "act=relu,tanh", "width=16", "diagnose.draws=2",
                              "hydra.sweep.dir=diagnosis"]),
    ]
    done = together(*(lambda c=c: run_cli(*c[1], cwd=root, env=env, program=c[0]) for c in commands))
    for p in done:
        assert p.returncode == 0, p.stderr
    page = root / "report.html"
    paths = [str(root / d) for d in ("sweep", "diagnosis")]
    report.main([*paths, "--html", str(page)])
    return {"root": root, "page": page, "runs": report.results(paths)}


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.subprocess  # the console scripts make the sweeps; Chromium and its driver
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: apt-get install chromium chromium-driver")
def test_the_page_of_a_small_sweep_in_chromium(real, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # the driver's path given: Selenium Manager, which would download one, never runs
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(real["page"].as_uri())
        deadline = time.monotonic() + 60
        while not driver.execute_script("return document.body.dataset.ready") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert driver.execute_script("return document.body.dataset.ready") == "true"

        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        requested = [m["params"]["request"]["url"] for m in events if m["method"] == "Network.requestWillBeSent"]
        assert real["page"].as_uri() in requested
        assert not [u for u in requested if u.startswith(("http:", "https:", "ws:", "wss:"))], requested
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert not [u for u in resources if u.startswith(("http:", "https:"))], resources

        header = driver.find_element("tag name", "header").text
        assert "deeprun -m depth=2,5 lr=0.05,1e6 seed=0,1" in header and "deeprun-diagnose -m depth=2,6" in header
        # every run a row, linked to its section
        rows = driver.execute_script("return [...document.querySelectorAll('#results-table tbody tr')]"
                                     ".map(tr => tr.querySelector('a').getAttribute('title'))")
        assert sorted(rows) == sorted(real["runs"]["run"]) and len(rows) == 8 + 4
        assert driver.execute_script("return document.querySelectorAll('details.run').length") == len(rows)
        diverged = int((real["runs"]["status"] == "diverged").sum())
        assert diverged == 4  # lr=1e6
        assert driver.execute_script("return document.querySelectorAll('#results-table tr.status-diverged').length") == diverged

        # a click on a header sorts the rows by it, missing values last; a second click the other way
        def column(name):
            return driver.execute_script(
                "const k = [...document.querySelectorAll('#results-table thead th')].findIndex(th => th.dataset.col "
                "=== arguments[0]); return [...document.querySelectorAll('#results-table tbody tr')].map(tr => "
                "tr.cells[k].dataset.v === '' ? null : Number(tr.cells[k].dataset.v))", name)

        before = column("final_train_loss")
        header = driver.find_element("css selector", '#results-table th[data-col="final_train_loss"] button')
        header.click()
        after = column("final_train_loss")
        numbers = [v for v in before if v is not None]
        assert after == sorted(numbers) + [None] * (len(before) - len(numbers)) and after != before
        header.click()
        assert column("final_train_loss") == sorted(numbers, reverse=True) + [None] * (len(before) - len(numbers))

        # every chart drawn: an SVG with marks in it, or a canvas with something painted
        charts = driver.execute_script("""
            return [...document.querySelectorAll('.chart')].map(el => {
              const svg = el.querySelector('svg.marks'), canvas = el.querySelector('canvas.marks');
              let painted = false;
              if (canvas && canvas.width > 0) {
                const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                for (let k = 3; k < pixels.length && !painted; k += 4) painted = pixels[k] > 0;
              }
              return {spec: el.dataset.spec, empty: el.classList.contains('empty'), text: el.textContent.slice(0, 90),
                      drawn: painted || (svg !== null && svg.querySelectorAll('path, rect, line, text').length > 10)};
            });""")
        assert {"pivot_0", "loss", "grad", "heat_grad_norm", "diagnosis"} <= {c["spec"] for c in charts}
        for chart in charts:
            assert chart["drawn"] or (chart["empty"] and chart["spec"] in ("heat_dead_frac", "heat_saturated_frac")
                                      and "measured for" in chart["text"]), chart

        # the filter hides the other rows, and the charts follow it
        driver.find_element("id", "filter").send_keys("depth>4")
        time.sleep(0.6)
        shown = driver.execute_script("return [...document.querySelectorAll('#results-table tbody tr')]"
                                      ".filter(tr => !tr.hidden).length")
        assert shown == int((real["runs"]["depth"] > 4).sum()) == 6
        assert driver.execute_script("return window.deeprunReport.views.loss.signal('shown').length") == shown

        driver.find_element("id", "filter").clear()
        driver.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
        time.sleep(0.4)
        png = driver.get_screenshot_as_png()
        (tmp_path / "page.png").write_bytes(png)
        from PIL import Image

        colours = Image.open(io.BytesIO(png)).convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "a blank screenshot"
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
