"""What a language model accepts as input, and how several invokes form one batch.

    inputs = normalize(tokenizer, "Hello world")           # str -> {"input_ids", "attention_mask"}
    inputs = normalize(tokenizer, ["a", "b c"])            # list of str (left-padded)
    inputs = normalize(tokenizer, [[1, 2, 3]])             # token ids (list or tensor)
    inputs = normalize(tokenizer, tokenizer("Hi", return_tensors="pt"))   # a dict / BatchEncoding:
    inputs = normalize(tokenizer, None, input_ids=ids, token_type_ids=types)  # every key is kept
    batch = batch_inputs(tokenizer.pad_token_id, [inputs1, inputs2])       # left-padded, rows in order
    batch = with_positions(batch)          # position_ids from the attention mask (left padding)
    batch = without_padding_labels(batch)  # a row's first token is not scored from a padding position

Every invoke ends as a dict of `input_ids` (or `inputs_embeds`) and `attention_mask`
(batch, tokens) plus whatever else it gave (`position_ids`, `token_type_ids`,
`decoder_input_ids`, `labels`, ...). Batching left-pads each per-token tensor to the
longest invoke: ids with the pad token, masks with 0, `labels` with -100, embeddings
and anything else with 0. An empty prompt is refused with a ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Keys that hold the model's inputs (the rest of a trace's keywords are settings).
TOKEN_KEYS = ("input_ids", "attention_mask", "labels", "position_ids", "token_type_ids", "inputs_embeds",
              "decoder_input_ids", "decoder_attention_mask", "decoder_inputs_embeds", "decoder_position_ids")


def _empty_prompt() -> ValueError:
    return ValueError("Empty prompt: give at least one token (a non-empty string or a non-empty list of token ids)")


def _as_rows(ids: Any) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        rows = ids.unsqueeze(0) if ids.dim() == 1 else ids
    else:
        ids = list(ids)
        if not ids:
            raise _empty_prompt()
        if isinstance(ids[0], int):
            rows = torch.tensor([ids], dtype=torch.long)
        else:
            return _pad_lists([list(r) for r in ids])[0]
    if rows.dim() != 2:
        raise ValueError(f"token ids must be 1-D or 2-D (batch, tokens), got shape {tuple(rows.shape)}")
    if rows.shape[-1] == 0 or rows.shape[0] == 0:
        raise _empty_prompt()
    return rows.long()


def _pad_lists(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    if any(len(r) == 0 for r in rows):
        raise _empty_prompt()
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def _as_mapping(tokenizer, value: Any) -> dict:
    """A prompt, prompts or token ids as {"input_ids", "attention_mask"}; a mapping as a plain dict."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        if any(v == "" for v in value):
            raise _empty_prompt()
        encoded = tokenizer(list(value), return_tensors="pt", padding=True)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], int) and \
            not isinstance(value[0], torch.Tensor):
        ids, mask = _pad_lists([list(r) for r in value], tokenizer.pad_token_id or 0)
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": _as_rows(value)}


def normalize(tokenizer, value: Any = None, **keywords: Any) -> dict[str, Any]:
    """One invoke's inputs: the prompt (or mapping) `value` plus input keywords, as one dict
    whose `input_ids`/`attention_mask` (or `inputs_embeds`) are (batch, tokens) tensors."""
    if value is None:
        if "input_ids" not in keywords and "inputs_embeds" not in keywords:
            raise ValueError("No input: give a prompt, token ids, input_ids=... or inputs_embeds=...")
        inputs = {}
    else:
        inputs = _as_mapping(tokenizer, value)
    for key, given in keywords.items():  # keywords beside a prompt add to (or replace) its keys
        inputs[key] = given
    if "input_ids" in inputs:
        ids = inputs["input_ids"] = _as_rows(inputs["input_ids"])
    elif "inputs_embeds" in inputs:
        embeds = inputs["inputs_embeds"]
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[1] == 0:
            raise ValueError("inputs_embeds must be a (batch, tokens, hidden) tensor with at least one token")
        ids = embeds[..., 0]
    else:
        raise ValueError(f"An input mapping needs `input_ids` or `inputs_embeds`, got keys {sorted(inputs)}")
    mask = inputs.get("attention_mask")
    inputs["attention_mask"] = torch.ones(ids.shape, dtype=torch.long) if mask is None else _as_rows(mask)
    if tuple(inputs["attention_mask"].shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask shape {tuple(inputs['attention_mask'].shape)} does not match the "
                         f"tokens {tuple(ids.shape)}")
    if inputs.get("labels") is not None:
        inputs["labels"] = _as_rows(inputs["labels"])
    return inputs


def batch_size(inputs: dict) -> int:
    """How many prompts (rows) an invoke's normalized inputs hold."""
    return _tokens(inputs).shape[0]


def _tokens(inputs: dict) -> torch.Tensor:
    return inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]


def _pad_value(key: str, pad_token_id: int) -> float:
    if key == "labels":
        return -100
    if key.endswith("input_ids"):
        return pad_token_id
    return 0  # masks (padding is not attended), positions, token types, embeddings


def _left_pad(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    missing = width - t.shape[1]
    if missing <= 0:
        return t
    pad = t.new_full((t.shape[0], missing, *t.shape[2:]), value)
    return torch.cat([pad, t], dim=1)


def batch_inputs(pad_token_id: int, parts: list[dict]) -> dict[str, Any]:
    """Several invokes' inputs as one batch: per-row tensors are left-padded to the longest
    invoke (per key) and stacked in invoke order; other values must agree."""
    keys = list(dict.fromkeys(key for part in parts for key in part))
    widths = [_tokens(part).shape[1] for part in parts]  # each invoke's token count
    batch: dict[str, Any] = {}
    for key in keys:
        values = [part.get(key) for part in parts]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if not tensors:
            if any(v != values[0] for v in values):
                raise ValueError(f"Invokes give different `{key}` ({values}): give it once, to the trace")
            batch[key] = values[0]
            continue
        if len(tensors) < len(values):
            if key == "labels":  # an invoke without labels is not scored
                values = [v if v is not None else torch.full((batch_size(p), w), -100, dtype=torch.long)
                          for v, p, w in zip(values, parts, widths)]
            else:
                raise ValueError(f"Only some invokes give `{key}`: give it to every invoke or to none")
        for value, part in zip(values, parts):
            if value.dim() == 0 or value.shape[0] != batch_size(part):
                raise ValueError(f"`{key}` has shape {tuple(value.shape)}; each invoke's `{key}` must have one "
                                 f"row per prompt ({batch_size(part)})")
        if values[0].dim() >= 2:
            # per-token values (masks, positions, labels, ...) line up with the padded tokens;
            # others (decoder inputs) are padded to their own longest
            per_token = all(v.shape[1] == w for v, w in zip(values, widths))
            width = max(widths) if per_token else max(v.shape[1] for v in values)
            values = [_left_pad(v, width, _pad_value(key, pad_token_id)) for v in values]
        batch[key] = torch.cat(values)
    for decoder in ("decoder_input_ids", "decoder_inputs_embeds"):
        # decoder inputs of different lengths were left-padded: mask the padding
        lengths = [p[decoder].shape[1] for p in parts if isinstance(p.get(decoder), torch.Tensor)]
        if lengths and len(set(lengths)) > 1 and "decoder_attention_mask" not in batch:
            width = max(lengths)
            batch["decoder_attention_mask"] = torch.cat(
                [_left_pad(torch.ones(p[decoder].shape[:2], dtype=torch.long), width, 0) for p in parts])
    return batch


def without_padding_labels(inputs: dict) -> dict:
    """Left padding puts a padding position before a row's first token, and a causal LM's loss
    would score that token from it: its label becomes -100, so each row's loss is its loss alone."""
    mask, labels = inputs.get("attention_mask"), inputs.get("labels")
    if not isinstance(labels, torch.Tensor) or not isinstance(mask, torch.Tensor) or labels.shape != mask.shape \
            or bool(mask.all()):
        return inputs
    labels = labels.clone()
    labels[:, 1:][mask[:, :-1] == 0] = -100
    return {**inputs, "labels": labels}


def with_positions(inputs: dict) -> dict:
    """Adds `position_ids` counted over the attended tokens (as `generate` does), so a
    left-padded row sees the positions it would have alone. Unpadded inputs are left as
    they are."""
    mask = inputs.get("attention_mask")
    if "position_ids" in inputs or not isinstance(mask, torch.Tensor) or bool(mask.all()):
        return inputs
    positions = mask.long().cumsum(-1) - 1
    positions.masked_fill_(mask == 0, 1)
    return {**inputs, "position_ids": positions}
