"""VLLM: trace and steer a model that vLLM serves (one process, or tensor-parallel workers).

    model = VLLM("path/to/llama", tensor_parallel_size=1, dtype="float32")  # lazy: no engine yet
    print(model)                                       # vLLM's module tree for the architecture
    with model.trace("The Eiffel Tower is in", temperature=0.0, max_tokens=3) as tracer:
        for step in tracer.all():                      # step 0 is the prefill
            model.model.layers[0].mlp.output[:] += steering
            logits = model.logits.output.save()        # [1, vocab]: this invoke's row
        out = tracer.result.save()                     # vLLM's RequestOutput
    with model.trace(temperature=0.0, max_tokens=2) as tracer:
        with tracer.invoke("Hello"):                   # one vLLM request per invoke
            a = model.model.layers[1].output[0].save() # its own flat token rows only
        with tracer.invoke("World", max_tokens=4):     # sampling settings per invoke too
            b = model.samples.output.save()

The first trace (or `dispatch=True`) starts vLLM's engine with this package's worker
extension; each invoke's captured body travels with its request (vLLM's per-request
`extra_args`) to the worker process(es), runs there against the real modules under
the same native dispatcher, and what it saved comes back with `collective_rpc`.
Code in the trace body outside invokes runs here. Engine keywords go to `vllm.LLM`
(`enforce_eager` defaults to True: bodies see the eager modules).
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from typing import Any

from ...envoy import Envoy
from ...model import NNsight
from ...tracing.tracer import Tracer
from .engine_watch import dead_engine_raises
from .shipping import pack_body, unpack_values
from .step_modules import add_step_modules
from .worker import EXTRA_KEY
from .worker_trace import ResultOf

_EXTENSION = "nnsight_fast.modeling.vllm.worker.NNsightFastWorker"
_COLLECT_TIMEOUT_S = 300  # a worker that does not answer is an error, not a hang
_SAMPLING_ALIASES = {"max_new_tokens": "max_tokens", "do_sample": None}


class VLLMTracer(Tracer):
    """`model.trace(...)` on a VLLM model: each invoke is one vLLM request whose body runs in the worker;
    `tracer.invoke(prompt, **sampling)` gives an invoke its own sampling settings."""

    def __init__(self, model: "VLLM", args: tuple, sampling: dict):
        super().__init__(model, model._target, args, {})
        self.sampling = sampling

    def _execute(self) -> None:
        model: VLLM = self.model
        invokes = self._invokes
        for invoke in invokes:
            if invoke.inputs is None:
                raise ValueError("VLLM: every invoke needs a prompt (`tracer.invoke(prompt)`): each invoke is one "
                                 "vLLM request, and an invoke without one would see other requests' rows")
        llm = model._engine()
        trace_id = uuid.uuid4().hex
        refer = functools.partial(_reference, model, self, trace_id)
        prompts, params = [], []
        for index, invoke in enumerate(invokes):
            args, overrides = invoke.inputs
            prompt = model._prompt(args)
            settings = {**self.sampling, **overrides}
            params.append(model._sampling_params(settings, (trace_id, index, pack_body(invoke.body, refer))))
            prompts.append(prompt)
        collect = functools.partial(llm.collective_rpc, "nnsight_fast_collect", timeout=_COLLECT_TIMEOUT_S,
                                    args=(trace_id,))
        try:
            with dead_engine_raises(llm):
                outputs = llm.generate(prompts, params, use_tqdm=False)
        except BaseException:  # Ctrl-C, a dead engine: nothing of this trace may run on
            with contextlib.suppress(Exception):
                _abort_unfinished(llm)
                collect()
            raise
        replies = collect()
        saved, errors = unpack_values(next(reply for reply in replies if reply is not None))
        for index, values in saved:
            for name, value in values.items():
                if isinstance(value, ResultOf):
                    values[name] = value = outputs[value.invoke]
                self.record_save(value)
            self._namespaces.append(values)
        if errors:
            index, error, lines = errors[0]
            if lines:
                error.add_note("raised in vLLM's worker by the traced block:\n" + "\n".join(lines))
            raise error


def _abort_unfinished(llm: Any) -> None:
    """Aborts the requests an interrupted `generate` left in the engine (LLM runs one generate at
    a time, so they are this trace's): they would otherwise run on and come back with the next one."""
    engine = llm.llm_engine
    if engine.has_unfinished_requests():
        engine.abort_request(list(engine.output_processor.request_states), internal=True)


def _reference(model: "VLLM", tracer: VLLMTracer, trace_id: str, obj: Any) -> Any:
    """How an object a body reads travels to the worker: Envoys and the tracer by reference."""
    if obj is tracer:
        return ("tracer", trace_id)
    if isinstance(obj, Envoy) and obj.interleaver is model.interleaver:  # the model itself too ("model")
        return ("envoy", obj.path)
    return None


class VLLM(NNsight):
    """A model served by vLLM, traced like any NNsight model (see the module docstring).

    model = VLLM("path/to/checkpoint", tensor_parallel_size=2, dtype="float32")
    with model.trace("Hello", max_tokens=4) as tracer:
        hidden = model.model.layers[0].output[0].save()
    """

    def __init__(self, repo_or_folder: str, *, dispatch: bool = False, tokenizer: Any = None, **engine_kwargs: Any):
        from transformers import AutoTokenizer

        engine_kwargs.setdefault("enforce_eager", True)
        self.__dict__["repo_id"] = repo_or_folder
        self.__dict__["_engine_kwargs"] = engine_kwargs
        self.__dict__["_llm"] = None
        module = _meta_model(repo_or_folder, engine_kwargs)
        add_step_modules(module)
        super().__init__(module)
        self.__dict__["tokenizer"] = tokenizer or AutoTokenizer.from_pretrained(repo_or_folder)
        if dispatch:
            self._engine()

    @property
    def dispatched(self) -> bool:
        """True once vLLM's engine runs."""
        return self._llm is not None

    def _engine(self) -> Any:
        """vLLM's engine, started on first use with this package's worker extension."""
        if self._llm is None:
            from vllm import LLM

            llm = LLM(self.repo_id, worker_extension_cls=_EXTENSION, **self._engine_kwargs)
            llm.collective_rpc("nnsight_fast_install")
            self.__dict__["_llm"] = llm
        return self._llm

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` running the model (started on first use)."""
        return self._engine()

    def trace(self, *prompts: Any, trace: bool = True, **sampling: Any) -> VLLMTracer | Any:
        """A generation: each prompt (or `tracer.invoke(prompt)`) is one request; keywords are sampling
        settings (`temperature`, `max_tokens`, `top_p`, ...). trace=False returns vLLM's outputs."""
        if not trace:
            params = self._sampling_params(sampling, None)
            llm = self._engine()
            with dead_engine_raises(llm):
                return llm.generate([self._prompt((p,)) for p in prompts], params, use_tqdm=False)
        if len(prompts) > 1:
            raise ValueError("VLLM: give one prompt to model.trace(prompt), or use `tracer.invoke(prompt)` per prompt")
        return VLLMTracer(self, prompts, sampling)

    def generate(self, *prompts: Any, **sampling: Any) -> VLLMTracer:
        """`trace` with generation defaults (`max_new_tokens=` is accepted for `max_tokens=`)."""
        return self.trace(*prompts, **sampling)

    def _prompt(self, args: tuple) -> Any:
        if len(args) != 1:
            raise ValueError(f"VLLM: each invoke takes one prompt (a string or a list of token ids), got {len(args)}")
        prompt = args[0]
        if isinstance(prompt, str):
            return prompt
        if hasattr(prompt, "tolist"):
            prompt = prompt.tolist()
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return {"prompt_token_ids": prompt}
        raise TypeError(f"VLLM: a prompt is a string or a list of token ids, got {type(prompt).__name__}")

    def _sampling_params(self, settings: dict, shipped: Any) -> Any:
        from vllm import SamplingParams

        settings = dict(settings)
        for alias, name in _SAMPLING_ALIASES.items():
            if alias in settings:
                value = settings.pop(alias)
                if name is not None:
                    settings.setdefault(name, value)
        extra = dict(settings.pop("extra_args", None) or {})
        if shipped is not None:
            if settings.get("n", 1) != 1:
                raise ValueError(f"VLLM: n={settings['n']} makes vLLM run {settings['n']} requests for one invoke; "
                                 "open one `tracer.invoke(prompt)` per sample instead")
            extra[EXTRA_KEY] = shipped
        try:
            return SamplingParams(**settings, extra_args=extra or None)
        except TypeError as error:
            raise TypeError(f"VLLM: {error} (sampling settings are vllm.SamplingParams fields)") from None


def _meta_model(repo_or_folder: str, engine_kwargs: dict) -> Any:
    """The module tree vLLM builds for this checkpoint, on the meta device (one rank's view of a
    single-GPU run: whole shapes), without starting an engine."""
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.utils import initialize_model
    from vllm.utils.network_utils import get_open_port

    single = {k: v for k, v in engine_kwargs.items() if k not in ("tensor_parallel_size", "pipeline_parallel_size")}
    config = EngineArgs(model=repo_or_folder, **single).create_engine_config()
    from vllm.model_executor.layers import rotary_embedding

    ropes_before = set(rotary_embedding._ROPE_DICT)
    own_groups = not torch.distributed.is_initialized()
    if not own_groups and not (parallel_state.model_parallel_is_initialized()
                               and parallel_state.get_tp_group().world_size == 1):
        raise RuntimeError("VLLM: torch.distributed is already set up in this process for more than one rank; "
                           "create the VLLM model before it")
    with set_current_vllm_config(config):
        if own_groups:  # vLLM's layers ask their tensor-parallel group for its size
            parallel_state.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{get_open_port()}", 0, "gloo")
            parallel_state.initialize_model_parallel(1, 1)
        try:
            with torch.device("meta"):
                return initialize_model(config)
        finally:
            if own_groups:
                parallel_state.destroy_model_parallel()
                parallel_state.destroy_distributed_environment()
            # vLLM shares rotary embeddings through a process-wide cache: an engine in this
            # process (VLLM_ENABLE_V1_MULTIPROCESSING=0) must not get the meta ones.
            for key in set(rotary_embedding._ROPE_DICT) - ropes_before:
                del rotary_embedding._ROPE_DICT[key]
