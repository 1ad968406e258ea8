"""vLLM tests: run in the vLLM venv (`make test-vllm`); skipped where vLLM is not installed.

One engine per configuration for the whole session (an engine takes ~20 s to start);
a tiny random-init Llama (head_dim 32, as vLLM's CPU attention needs) built and saved here."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the oracle hooks travel as callables

from checkpoints import ENGINE, build_llama  # noqa: E402


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    yield  # vLLM keeps its own threads for the engine's life


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory):
    return build_llama(str(tmp_path_factory.mktemp("vllm") / "llama"))


@pytest.fixture(scope="session")
def model(llama_folder):
    from nnsight_fast import VLLM

    return VLLM(llama_folder, **ENGINE)
