"""Tensor parallel: a body sees whole values where a module's value is sharded across ranks.

    sharding = Sharding.of_current_group()         # on a worker, once vLLM set up its groups
    envoys = sharding.envoy_classes()              # {ColumnParallelLinear: ..., RowParallelLinear: ...}
    model = NNsight(vllm_model, envoys=envoys)     # TP=1: None, plain Envoys

With `tensor_parallel_size=N` each rank holds a slice of some values along their last
dimension: the outputs of column-parallel linears (merged ones hold one slice per part,
e.g. [gate_r, up_r]; QKV holds [q_r, k_r, v_r]) and of attention, the inputs of
row-parallel linears. Reading one gathers the ranks' slices into the layout
`tensor_parallel_size=1` has (every rank runs the same body, so the all-gathers pair
up); the whole value, edited in place or not, is copied back to this rank's slice when the
body's turn ends, and an assigned whole value is sliced again. Other values are
already whole on every rank.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ... import mediator as _mediator
from ...envoy import Envoy


class Sharding:
    """This worker's place in its tensor-parallel group and the gather/slice of values."""

    def __init__(self, size: int, rank: int, group: Any = None):
        self.size, self.rank, self._group = size, rank, group

    @classmethod
    def of_current_group(cls) -> "Sharding":
        """The tensor-parallel group vLLM set up for this worker."""
        from vllm.distributed import parallel_state

        group = parallel_state.get_tp_group()
        return cls(group.world_size, group.rank_in_group, group)

    def gather(self, local: torch.Tensor, parts: list[int]) -> torch.Tensor:
        """The whole value from each rank's `local` slice (`parts`: this rank's width of each part)."""
        pieces = self._group.all_gather(local.contiguous(), dim=-1).split(sum(parts), dim=-1)  # one per rank
        by_rank = [piece.split(parts, dim=-1) for piece in pieces]
        return torch.cat([by_rank[r][p] for p in range(len(parts)) for r in range(self.size)], dim=-1)

    def slice(self, whole: torch.Tensor, parts: list[int]) -> torch.Tensor:
        """This rank's slice of a whole value."""
        chunks = whole.split([p * self.size for p in parts], dim=-1)
        return torch.cat([chunk[..., self.rank * p:(self.rank + 1) * p] for chunk, p in zip(chunks, parts)], dim=-1)

    def envoy_classes(self) -> dict | None:
        """Envoy classes for the modules whose values are sharded (None when TP=1)."""
        if self.size == 1:
            return None
        from vllm.model_executor.layers.attention.attention import Attention
        from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear

        attributes = {"sharding": self}
        output = type("ShardedOutputEnvoy", (ShardedOutputEnvoy,), attributes)
        inputs = type("ShardedInputEnvoy", (ShardedInputEnvoy,), attributes)
        return {ColumnParallelLinear: output, Attention: output, RowParallelLinear: inputs}


def _tensor_of(value: Any) -> Any:
    """The sharded tensor of a value: the value, or the first item of a linear's (output, bias)."""
    return value[0] if isinstance(value, tuple) else value


def _with_tensor(value: Any, tensor: Any) -> Any:
    """`value` with its sharded tensor replaced by `tensor`."""
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


def _parts(module: torch.nn.Module, local_width: int, what: str) -> list[int]:
    """This rank's width of each part of the value (one part unless a merged linear's output)."""
    if what == "output":
        sizes = getattr(module, "output_partition_sizes", None)
        if sizes and not getattr(module, "gather_output", False):
            return list(sizes)
    return [local_width]


class _Whole:
    """The whole value a body reads at one visit, tied to this rank's slice."""

    def __init__(self, sharding: Sharding, local: Any, parts: list[int]):
        self.sharding, self.local, self.parts = sharding, local, parts
        self.whole_tensor = sharding.gather(_tensor_of(local), parts)
        self.whole = _with_tensor(local, self.whole_tensor)

    def write_back(self) -> None:
        # vLLM runs in inference mode, whose tensors keep no version counter to tell an
        # edit: copy this rank's slice back whether or not the body edited it.
        _tensor_of(self.local).copy_(self.sharding.slice(self.whole_tensor, self.parts))


# Per body: location -> the whole value read there in this turn (reads of one visit share it).
_read_this_turn: "weakref.WeakKeyDictionary[Any, dict[int, _Whole]]" = weakref.WeakKeyDictionary()


def _forget(location: int) -> None:
    """An assignment replaces the value read at `location`: its whole value is not written back."""
    mediator = _mediator.current_mediator()
    if mediator is not None:
        _read_this_turn.get(mediator, {}).pop(location, None)


class _ShardedValues(Envoy):
    sharding: Sharding

    def _whole(self, local: Any, location: int, what: str) -> Any:
        mediator = _mediator.current_mediator()
        seen = _read_this_turn.setdefault(mediator, {})
        whole = seen.get(location)
        if whole is None or whole.local is not local:
            parts = _parts(self._module, _tensor_of(local).shape[-1], what)
            whole = seen[location] = _Whole(self.sharding, local, parts)
            mediator.defer(lambda: (whole.write_back(), seen.pop(location, None)))
        return whole.whole

    def _sliced(self, whole: Any, what: str) -> Any:
        tensor = _tensor_of(whole)
        if not isinstance(tensor, torch.Tensor):
            return whole
        local = self.sharding.slice(tensor, _parts(self._module, tensor.shape[-1] // self.sharding.size, what))
        return _with_tensor(whole, local)


class ShardedOutputEnvoy(_ShardedValues):
    """A module whose output is sliced across ranks: `.output` is the whole value."""

    @property
    def output(self) -> Any:
        """The whole output (gathered from every rank)."""
        local = _mediator.request(self._output_location, self.path, "output")
        return self._whole(local, self._output_location, "output")

    @output.setter
    def output(self, value: Any) -> None:
        _forget(self._output_location)
        _mediator.assign(self._output_location, self.path, "output", self._sliced(value, "output"))


class ShardedInputEnvoy(_ShardedValues):
    """A module whose first input is sliced across ranks: `.input` is the whole value."""

    @property
    def input(self) -> Any:
        """The whole first input (gathered from every rank)."""
        args, kwargs = _mediator.request(self._input_location, self.path, "input")
        return self._whole(args[0], self._input_location, "input")

    @input.setter
    def input(self, value: Any) -> None:
        args, kwargs = _mediator.request(self._input_location, self.path, "input")
        _forget(self._input_location)
        local = self._sliced(value, "input")
        _mediator.assign(self._input_location, self.path, "input", ((local, *args[1:]), kwargs))
