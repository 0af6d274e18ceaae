# deeprun: `make run` trains the default experiment, `make test` runs the suite.
# Both create the virtual environment in .venv/ on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
ARGS ?=

.PHONY: help install run test test-fast bench experiments clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv and install deeprun (editable) with test tools

# constraints.txt pins torch to the CPU wheel this machine has on disk; the
# package itself keeps an open range for users.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[test]'
	touch $@

run: install  ## train the default experiment (pass overrides as ARGS="depth=8 act=tanh")
	$(VENV)/bin/deeprun $(ARGS)

test: install  ## the whole test suite (what CI runs), its 10 slowest tests at the end
	$(PY) -m pytest -q --durations=10

test-fast: install  ## in-process tests, about a minute: leaves out the marks slow (long runs, the fuzz), exhaustive (most of each family of like cases), subprocess (commands, fresh interpreters), browser
	$(PY) -m pytest -q -m "not slow and not exhaustive and not subprocess and not browser"

bench: install  ## deeprun vs a hand-written loop and Lightning, as ratios; sweep costs; stacked sweeps (STACK_BENCH_ARGS=--quick); diagnosis times
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[bench]'
	$(PY) bench/bench.py
	$(PY) bench/sweep_bench.py
	$(PY) bench/stack_bench.py $(STACK_BENCH_ARGS)
	$(PY) bench/diagnose_bench.py

experiments: install  ## run the notebooks' experiment presets, rewrite docs/experiments.md (ARGS="--only width_vs_depth")
	$(PY) docs/experiments.py $(ARGS)

clean:  ## remove the environment and caches (keeps outputs/)
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
