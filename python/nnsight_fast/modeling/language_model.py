"""LanguageModel: a transformers causal LM with its tokenizer, traced like any NNsight model.

    model = LanguageModel("path/to/gpt2")             # lazy: built on the meta device, no weights read
    print(model)                                      # the module tree, at once
    with model.trace("The Eiffel Tower is in"):       # the first real run loads the weights
        hidden = model.transformer.h[5].output.save()
    with model.generate("Hello", max_new_tokens=8) as tracer:
        for step in tracer.all():
            model.transformer.h[3].output[:] += steering
        tokens = tracer.result.save()

Inputs: a string, a list of strings, token ids (list or tensor), a dict or
BatchEncoding (every key is passed on: `token_type_ids`, `position_ids`,
`decoder_input_ids`, ...), or the same as keywords (`input_ids=`, `labels=`, ...).
Several `tracer.invoke(...)` blocks form one left-padded batch with merged attention
masks; each invoke sees only its own rows. A left-padded batch gets `position_ids`
counted over its attended tokens (as `generate` does), so every prompt sees the
positions it has alone. Keywords given to `LanguageModel(...)` (dtype,
attn_implementation, config overrides such as num_hidden_layers) shape the lazy
meta model exactly as they shape the loaded one.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

import torch

from ..envoy import Envoy
from ..model import NNsight
from ..tracing.tracer import Tracer
from .generator import Generator, StreamerEnvoy
from .lm_inputs import TOKEN_KEYS, batch_inputs, batch_size, normalize, with_positions, without_padding_labels


class GenerateTracer(Tracer):
    """`model.generate(...)`: the run is `generate`, each forward call one step."""

    def __init__(self, model: "LanguageModel", args: tuple, kwargs: dict):
        inputs = {k: v for k, v in kwargs.items() if k in TOKEN_KEYS}
        self.generate_kwargs = {k: v for k, v in kwargs.items() if k not in TOKEN_KEYS}
        super().__init__(model, model._target, args, inputs)

    def _call_model(self, args: tuple, kwargs: dict) -> Any:
        return self.model._run_generate(kwargs, self.generate_kwargs, self._end_loops)


class LanguageModel(NNsight):
    """A transformers model with its tokenizer, loaded lazily, traced like any NNsight model.

    model = LanguageModel("path/to/checkpoint")             # meta model: no weights read yet
    with model.trace("Hello world"):
        logits = model.lm_head.output.save()
    with model.generate("Hello", max_new_tokens=5) as tracer:
        tokens = tracer.result.save()
    """

    def __init__(self, repo_or_folder: Any, *args: Any, dispatch: bool = False, tokenizer: Any = None,
                 automodel: Any = None, device_map: Any = None, tokenizer_kwargs: dict | None = None,
                 **from_pretrained_kwargs: Any):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        automodel = automodel or AutoModelForCausalLM
        naming = {k: from_pretrained_kwargs.pop(k) for k in ("rename", "envoys", "threaded") if k in from_pretrained_kwargs}
        if isinstance(repo_or_folder, torch.nn.Module):
            module, self.__dict__["repo_id"] = repo_or_folder, getattr(repo_or_folder.config, "_name_or_path", None)
            dispatched = True
        else:
            self.__dict__["repo_id"] = repo_or_folder
            if dispatch:
                module = automodel.from_pretrained(repo_or_folder, *args, device_map=device_map,
                                                   **from_pretrained_kwargs)
            else:
                module = _meta_model(automodel, repo_or_folder, from_pretrained_kwargs)
            dispatched = dispatch
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(
                self.repo_id, **{"padding_side": "left", **(tokenizer_kwargs or {})}
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.__dict__.update(
            tokenizer=tokenizer, _dispatched=dispatched, _automodel=automodel, _device_map=device_map,
            _load_args=args, _load_kwargs=from_pretrained_kwargs,
        )
        super().__init__(module, **naming)
        generator = Envoy(Generator(), self._gates, "model.generator")
        streamer = StreamerEnvoy(generator._module.streamer, self._gates, "model.generator.streamer")
        generator._children["streamer"] = generator.__dict__["streamer"] = streamer
        self._children["generator"] = generator
        self.__dict__["generator"] = generator

    # ---- loading ----
    @property
    def dispatched(self) -> bool:
        """True once the real weights are loaded."""
        return self._dispatched

    def dispatch(self) -> None:
        """Loads the weights (once) and rebinds every Envoy to the loaded modules."""
        if self._dispatched:
            return
        module = self._automodel.from_pretrained(self.repo_id, *self._load_args, device_map=self._device_map,
                                                 **self._load_kwargs)
        self._rebind(module)
        self.__dict__["_dispatched"] = True

    def _prepare_run(self) -> None:
        self.dispatch()

    # ---- inputs ----
    def _prepare_inputs(self, *args: Any, **kwargs: Any) -> tuple[tuple, dict, int]:
        if len(args) > 1:
            raise ValueError(f"Give one input per invoke (a prompt, a list of prompts or token ids), got {len(args)}")
        inputs = normalize(self.tokenizer, args[0] if args else None, **kwargs)
        self._check_keys(inputs)
        return (), inputs, batch_size(inputs)

    def _check_keys(self, inputs: dict) -> None:
        """Refuses keys the model's forward does not take (they would be dropped or fail deep inside)."""
        taken, takes_any = _forward_keys(type(self._module))
        unknown = sorted(key for key in inputs if key not in taken and (not takes_any or key in TOKEN_KEYS))
        if unknown:
            raise ValueError(
                f"{type(self._module).__name__}.forward takes no {', '.join(repr(k) for k in unknown)}: it takes "
                f"{', '.join(sorted(taken))}"
            )

    def _batch_inputs(self, prepared: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict]:
        return (), batch_inputs(self.tokenizer.pad_token_id, [kwargs for _, kwargs, _ in prepared])

    def _takes_positions(self) -> bool:
        return "position_ids" in _forward_keys(type(self._module))[0]

    def _on_device(self, kwargs: dict) -> dict:
        device = next((p.device for p in self._module.parameters()), torch.device("cpu"))
        return {k: v.to(device) if isinstance(v, torch.Tensor) and v.device != device else v
                for k, v in kwargs.items()}

    # ---- running ----
    def _run(self, args: tuple, kwargs: dict) -> Any:
        self.dispatch()
        if self._takes_positions():
            kwargs = with_positions(kwargs)
        kwargs = without_padding_labels(kwargs)
        return self._module(*args, **self._on_device(kwargs))

    def _run_generate(self, inputs: dict, generate_kwargs: dict, end_loops) -> Any:
        self.dispatch()
        generator = self.generator._module
        generate_kwargs = {"pad_token_id": self.tokenizer.pad_token_id, **generate_kwargs}
        if generate_kwargs.get("num_beams", 1) == 1:
            generate_kwargs.setdefault("streamer", generator.streamer)
        output = self._module.generate(**self._on_device(inputs), **generate_kwargs)
        end_loops()  # before the generator output, so code after a loop can still read it
        return generator(output)

    def generate(self, *args: Any, **kwargs: Any) -> GenerateTracer:
        """A trace of `generate`: `with model.generate(prompt, max_new_tokens=n) as tracer:`."""
        return GenerateTracer(self, args, kwargs)


@functools.lru_cache(maxsize=None)
def _forward_keys(module_class: type) -> tuple[frozenset[str], bool]:
    """The keywords `module_class.forward` names, and whether it also takes any other keyword
    (a bare `**kwargs`); read once per class: inspecting is slow."""
    forward = module_class.forward
    parameters = inspect.signature(forward).parameters
    names = {name for name, p in parameters.items()
             if name != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    rest = next((p for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    if rest is None:
        return frozenset(names), False
    typed = _typed_keywords(forward, rest.name)
    if typed is None:
        return frozenset(names), True
    return frozenset(names | typed), False


def _typed_keywords(forward: Any, name: str) -> set[str] | None:
    """The keywords `**name: Unpack[SomeTypedDict]` names; None when it is not annotated so."""
    try:
        hint = typing.get_type_hints(forward).get(name)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate say nothing
        return None
    if typing.get_origin(hint) is not typing.Unpack:
        return None
    (typed,) = typing.get_args(hint)
    return set(getattr(typed, "__annotations__", {}))


def _meta_model(automodel: Any, repo_or_folder: Any, from_pretrained_kwargs: dict) -> torch.nn.Module:
    """The model `automodel.from_pretrained(repo_or_folder, **from_pretrained_kwargs)` will load,
    built on the meta device: same config overrides, dtype and attention implementation."""
    from transformers import AutoConfig  # transformers loads on first use, not on `import nnsight_fast`

    kwargs = dict(from_pretrained_kwargs)
    model_kwargs = {key: kwargs.pop(key) for key in ("dtype", "torch_dtype", "attn_implementation") if key in kwargs}
    if "torch_dtype" in model_kwargs:
        model_kwargs.setdefault("dtype", model_kwargs.pop("torch_dtype"))
    if "trust_remote_code" in kwargs:
        model_kwargs["trust_remote_code"] = kwargs["trust_remote_code"]
    # keywords naming config fields (num_hidden_layers=1, ...) override the config, as in from_pretrained
    config, _loading_only = AutoConfig.from_pretrained(repo_or_folder, return_unused_kwargs=True, **kwargs)
    if model_kwargs.get("dtype") == "auto":
        model_kwargs["dtype"] = getattr(config, "dtype", None) or torch.float32
    with torch.device("meta"):
        return automodel.from_config(config, **model_kwargs)
