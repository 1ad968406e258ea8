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
BatchEncoding with `input_ids` (and `attention_mask`), or `input_ids=` keywords;
`labels=` too. Several `tracer.invoke(...)` blocks form one left-padded batch with
merged attention masks; each invoke sees only its own rows.
"""

from __future__ import annotations

from typing import Any

import torch

from ..envoy import Envoy
from ..model import NNsight
from ..tracing.tracer import Tracer
from .generator import Generator
from .lm_inputs import INPUT_KEYS, left_pad_and_stack, normalize


class GenerateTracer(Tracer):
    """`model.generate(...)`: the run is `generate`, each forward call one step."""

    def __init__(self, model: "LanguageModel", args: tuple, kwargs: dict):
        inputs = {k: v for k, v in kwargs.items() if k in INPUT_KEYS}
        self.generate_kwargs = {k: v for k, v in kwargs.items() if k not in INPUT_KEYS}
        super().__init__(model, model._target, args, inputs)

    def _call_model(self, args: tuple, kwargs: dict) -> Any:
        return self.model._run_generate(kwargs, self.generate_kwargs, self._end_loops)


class LanguageModel(NNsight):
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
                config = AutoConfig.from_pretrained(repo_or_folder)
                with torch.device("meta"):
                    module = automodel.from_config(config)
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
        generator = Envoy(Generator(), "model.generator", self._gates)
        self._children["generator"] = generator
        self.__dict__["generator"] = generator

    # ---- loading ----
    @property
    def dispatched(self) -> bool:
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
        inputs = {k: kwargs.pop(k) for k in INPUT_KEYS if k in kwargs}
        ids, mask, labels = normalize(self.tokenizer, args[0] if args else None, **inputs)
        prepared = {"input_ids": ids, "attention_mask": mask, **({"labels": labels} if labels is not None else {})}
        return (), {**prepared, **kwargs}, ids.shape[0]

    def _batch_inputs(self, prepared: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict]:
        parts = [(kw["input_ids"], kw["attention_mask"], kw.get("labels")) for _, kw, _ in prepared]
        batch = left_pad_and_stack(self.tokenizer.pad_token_id, parts)
        extra = {k: v for _, kw, _ in prepared for k, v in kw.items() if k not in INPUT_KEYS}
        return (), {**extra, **batch}

    def _on_device(self, kwargs: dict) -> dict:
        device = next((p.device for p in self._module.parameters()), torch.device("cpu"))
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

    # ---- running ----
    def _run(self, args: tuple, kwargs: dict) -> Any:
        self.dispatch()
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
