"""What a language model accepts as input, and how several invokes form one batch.

    ids, mask, labels = normalize(tokenizer, "Hello world")           # str
    ids, mask, labels = normalize(tokenizer, ["a", "b c"])            # list of str
    ids, mask, labels = normalize(tokenizer, [[1, 2, 3]])             # token ids (list or tensor)
    ids, mask, labels = normalize(tokenizer, {"input_ids": ..., "attention_mask": ...})
    batch = left_pad_and_stack(tokenizer.pad_token_id, [(ids1, mask1, None), (ids2, mask2, None)])

Everything ends as left-padded `input_ids` and `attention_mask` (B, T) tensors;
`labels` are padded with -100. An empty prompt is refused with a ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

INPUT_KEYS = ("input_ids", "attention_mask", "labels")


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


def normalize(tokenizer, value: Any = None, **keywords: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One invoke's input as (input_ids, attention_mask, labels or None)."""
    labels = keywords.get("labels")
    if value is None:
        if "input_ids" not in keywords:
            raise ValueError("No input: give a prompt, token ids, or input_ids=...")
        value = {k: v for k, v in keywords.items() if k in ("input_ids", "attention_mask")}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        if any(v == "" for v in value):
            raise _empty_prompt()
        encoded = tokenizer(list(value), return_tensors="pt", padding=True)
        value = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if isinstance(value, Mapping):
        if "input_ids" not in value:
            raise ValueError(f"An input mapping needs `input_ids`, got keys {sorted(value)}")
        ids = _as_rows(value["input_ids"])
        mask = value.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else _as_rows(mask)
        labels = value.get("labels", labels)
    elif isinstance(value, (list, tuple)) and value and not isinstance(value[0], int):
        ids, mask = _pad_lists([list(r) for r in value], tokenizer.pad_token_id or 0)
    else:
        ids = _as_rows(value)
        mask = torch.ones_like(ids)
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    if labels is not None:
        labels = _as_rows(labels)
    return ids, mask, labels


def left_pad_and_stack(pad_token_id: int, parts: list[tuple]) -> dict[str, torch.Tensor]:
    """Several (ids, mask, labels) as one left-padded batch (rows in order)."""
    width = max(ids.shape[1] for ids, _, _ in parts)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        if t.shape[1] == width:
            return t
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    batch = {
        "input_ids": torch.cat([pad(ids, pad_token_id) for ids, _, _ in parts]),
        "attention_mask": torch.cat([pad(mask, 0) for _, mask, _ in parts]),
    }
    if any(labels is not None for _, _, labels in parts):
        batch["labels"] = torch.cat(
            [pad(labels if labels is not None else torch.full_like(ids, -100), -100) for ids, _, labels in parts]
        )
    return batch
