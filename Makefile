# Two entry points for a fresh machine (see README.md):
#   make demo   — set up .venv, build, run `python -m nnsight_fast`
#   make test   — set up .venv, build, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench setup

$(PY):
	$(PYTHON) -m venv $(VENV)

setup: $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q "torch>=2.6"
	$(PY) -m pip install -q scikit-build-core ninja cmake greenlet pytest psutil transformers tokenizers accelerate
	$(PY) -m pip install -q --no-build-isolation .

demo: setup
	$(PY) -m nnsight_fast

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/run.py $(if $(NNSIGHT_PYTHON),--nnsight-python $(NNSIGHT_PYTHON),)
