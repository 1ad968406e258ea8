"""The worker side: vLLM mixes `NNsightFastWorker` into its Worker class
(`worker_extension_cls`); the caller reaches it with `collective_rpc`.

    llm = LLM(folder, worker_extension_cls="nnsight_fast.modeling.vllm.worker.NNsightFastWorker", ...)
    llm.collective_rpc("nnsight_fast_install")          # once: wraps the worker's model
    params = SamplingParams(..., extra_args={EXTRA_KEY: (trace_id, invoke, packed_body)})
    llm.generate(prompts, params)                       # bodies run with their requests
    llm.collective_rpc("nnsight_fast_collect", args=(trace_id,))   # saved values, errors

`install` wraps the model vLLM built with NNsight (the same native Gates as a local
model), adds the `logits` and `samples` modules, and wraps four methods of this
worker's model runner instance: `execute_model` (new and finished requests),
`_model_forward` (a step's flat token rows per invoke), the model's `compute_logits`
and `_sample` (one row per request). A request without the extra argument runs untouched.
"""

from __future__ import annotations

import pickle
from typing import Any

from ...model import NNsight
from .sharding import Sharding
from .shipping import pack_values, unpack_body
from .step_modules import add_step_modules
from .worker_trace import WorkerTrace

EXTRA_KEY = "nnsight_fast"


class _OwnNames(type):
    """vLLM refuses an extension whose `dir()` names an attribute its Worker has; `save`,
    which nnsight_fast mounts on `object`, is one: list only the extension's own names."""

    def __dir__(cls) -> list[str]:
        return list(cls.__dict__)


class NNsightFastWorker(metaclass=_OwnNames):
    """Methods vLLM adds to its Worker (reached through `collective_rpc`)."""

    def nnsight_fast_install(self) -> str:
        """Wraps this worker's model for tracing (once); returns the model's class name."""
        runtime = self.__dict__.get("_nnsight_fast")
        if runtime is None:
            runtime = self.__dict__["_nnsight_fast"] = _Runtime(self)
        return type(runtime.module).__name__

    def nnsight_fast_collect(self, trace_id: str) -> bytes | None:
        """Ends trace `trace_id` here; the driver worker returns its saved values and errors."""
        runtime = self.__dict__["_nnsight_fast"]
        outcome = runtime.end(trace_id)
        return outcome if getattr(self, "rank", 0) == 0 else None


class _Runtime:
    """The traced model of one worker and the traces running on it."""

    def __init__(self, worker: Any):
        runner = worker.model_runner
        self.runner = runner
        self.module = runner.get_model()
        add_step_modules(self.module)
        self.sharding = Sharding.of_current_group()
        self.envoy = NNsight(self.module, envoys=self.sharding.envoy_classes())
        self.traces: dict[str, WorkerTrace] = {}
        self._requests: dict[str, tuple[WorkerTrace, int]] = {}  # vLLM request id -> (trace, invoke)
        self._scheduled = None
        self._step: WorkerTrace | None = None
        self._step_requests: list[int] = []  # invoke index per request row of the step (-1: not traced)
        self._wrap(runner)

    # ---- resolving the references a shipped body carries ----
    def resolve(self, key: Any) -> Any:
        kind, value = key
        if kind == "envoy":
            return self.envoy.get(value)  # "model" is the root itself
        if kind == "tracer":
            return self.traces[value]
        raise ValueError(f"unknown reference {key!r}")

    # ---- the runner's steps ----
    def _wrap(self, runner: Any) -> None:
        execute_model, model_forward, sample = runner.execute_model, runner._model_forward, runner._sample
        compute_logits = self.module.compute_logits

        def traced_execute_model(scheduler_output, *args, **kwargs):
            self._take_requests(scheduler_output)
            return execute_model(scheduler_output, *args, **kwargs)

        def traced_model_forward(*args, **kwargs):
            trace = self._begin_step()
            if trace is None:
                return model_forward(*args, **kwargs)
            with trace.running():
                return model_forward(*args, **kwargs)

        def traced_compute_logits(hidden_states, *args, **kwargs):
            trace = self._step
            if trace is None:
                return compute_logits(hidden_states, *args, **kwargs)
            self._request_rows(trace)
            with trace.running():
                logits = compute_logits(hidden_states, *args, **kwargs)
                return self.module.logits(logits) if logits is not None else logits

        def traced_sample(logits, *args, **kwargs):
            trace = self._step
            output = sample(logits, *args, **kwargs)
            if trace is None:
                return output
            self._request_rows(trace)
            with trace.running():
                output.sampled_token_ids = self.module.samples(output.sampled_token_ids)
            self._step = None
            return output

        runner.execute_model = traced_execute_model
        runner._model_forward = traced_model_forward
        runner._sample = traced_sample
        self.module.compute_logits = traced_compute_logits

    def _take_requests(self, scheduler_output: Any) -> None:
        self._scheduled = scheduler_output
        for request in scheduler_output.scheduled_new_reqs:
            extra = getattr(request.sampling_params, "extra_args", None) if request.sampling_params else None
            shipped = extra.get(EXTRA_KEY) if extra else None
            if shipped is None:
                continue
            trace_id, index, data = shipped
            trace = self.traces.get(trace_id)
            if trace is None:
                trace = self.traces[trace_id] = WorkerTrace(self.envoy)
            body = unpack_body(data, self.resolve)
            trace.add_invoke(index, body)
            self._requests[request.req_id] = (trace, index)
        for req_id in scheduler_output.finished_req_ids:
            owner = self._requests.pop(req_id, None)
            if owner is not None:
                owner[0].invoke_finished(owner[1])

    def _begin_step(self) -> WorkerTrace | None:
        batch = self.runner.input_batch
        req_ids = batch.req_ids[:batch.num_reqs]
        scheduled = self._scheduled.num_scheduled_tokens
        trace, rows, start, owners = None, {}, 0, []
        for req_id in req_ids:
            count = scheduled[req_id]
            owner = self._requests.get(req_id)
            if owner is not None:
                if trace is not None and owner[0] is not trace:
                    raise RuntimeError("nnsight_fast: requests of two traces were scheduled in one step")
                trace = owner[0]
                rows[owner[1]] = (start, count)
            owners.append(owner[1] if owner is not None else -1)
            start += count
        self._step, self._step_requests = trace, owners
        if trace is not None:
            trace.begin_step(rows, start)
        return trace

    def _request_rows(self, trace: WorkerTrace) -> None:
        owners = self._step_requests
        trace.set_rows({index: (row, 1) for row, index in enumerate(owners) if index >= 0}, len(owners))

    def end(self, trace_id: str) -> bytes:
        trace = self.traces.pop(trace_id, None)
        if trace is None:
            return pack_values(([], [(-1, RuntimeError("nnsight_fast: no request of this trace reached vLLM's worker"),
                                      [])]))
        for req_id in [r for r, (t, _) in self._requests.items() if t is trace]:
            del self._requests[req_id]
        if self._step is trace:
            self._step = None
        saved, errors = [], []
        for index, values, error, lines in trace.end():
            saved.append((index, values))
            if error is not None:
                errors.append((index, _portable(error), lines))
        try:
            return pack_values((saved, errors))
        except Exception as failure:  # noqa: BLE001 - a saved value that cannot travel
            return pack_values(([], [(-1, TypeError(f"a saved value cannot be sent back from vLLM's worker: "
                                                   f"{failure}"), [])]))


def _portable(error: BaseException) -> BaseException:
    """`error` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")
