# The two commands of the README:  `make run`  and  `make test`.
# Both create or refresh .venv first (torch==2.13.0 before anything that depends on it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/quickstart.toml
ARGS   ?=
# where pip takes torch from: empty = the configured index (PyPI, or this machine's pip.conf);
# e.g. https://download.pytorch.org/whl/cpu where PyPI's torch would be a CUDA build
TORCH_INDEX ?=
# test files run in parallel, each file in one worker (its module fixtures run once), longest
# first (tests/conftest.py: LONGEST_FIRST, kept in that order by --no-loadscope-reorder); most of
# a simulation test's time is Ray start-up and polling, so 2 workers help even on 2 cores;
# the 15 slowest tests are listed at the end (target: 15 minutes on 2 cores; measured: docs/testing.md).
# Each test process gets one intra-op thread (OMP_NUM_THREADS=1; tests that want more set them):
# two workers, each with the default of one thread per core, plus the Ray actors and subprocesses
# they start, oversubscribed the cores, and OpenMP's spinning threads made CPU-bound tests up to
# 4x slower (2026-12-02, one evening: 29 min of CPU and 22.6 min of tests before this and the
# flwr-run status polling change, 21 min of CPU and 16.9 min after both)
WORKERS ?= 2

export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1

.PHONY: run test venv flwr-run clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/fedmtl run $(CONFIG) $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=0 --durations=15 $(ARGS)

flwr-run: $(STAMP)
	$(BIN)/fedmtl flwr-run $(CONFIG)

clean:
	rm -rf $(VENV) runs .pytest_cache
