"""deeprun: why does my deeper network train worse? Run it and read the per-layer record.

Notebook API, the same code path as the `deeprun` command::

    import deeprun
    cfg = deeprun.compose(["model=resnet", "depth=20", "epochs=50"])
    result = deeprun.run(cfg)               # .summary, .epochs, .layers, .model
    data = deeprun.build_data(cfg)
    model = deeprun.build_model(cfg, data)
    found = deeprun.diagnose(cfg)           # at initialisation: .row (verdict@init, chi_1, ...), .layers
    table = deeprun.results("outputs/sweeps/<stamp>")             # deeprun-report's table, a DataFrame
    deeprun.report("outputs/sweeps/<stamp>", html="report.html")  # deeprun-report's page, pivots, PNGs

torch loads on first use of run / build_*, so `deeprun --help` and config errors stay fast; results and
report read records only and never load it.
"""

from .config import ConfigError, OutOfMemory, compose

__all__ = ["ConfigError", "OutOfMemory", "compose", "run", "build_data", "build_model", "Result", "diagnose",
           "results", "report"]
__version__ = "0.1.0"

_LAZY = {"run": "api", "Result": "api", "build_data": "data", "build_model": "models", "diagnose": "diagnosis",
         "results": "report", "report": "report"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        # report: the module deeprun-report runs, callable as deeprun.report(PATH, html=...); importing it
        # makes it the package's attribute anyway, so the first look-up returns what every later one does
        return module if name == _LAZY[name] else getattr(module, name)
    raise AttributeError(f"module 'deeprun' has no attribute {name!r}")
