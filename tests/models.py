"""Small models the tests trace, each paired with what plain PyTorch computes."""

from __future__ import annotations

from collections import namedtuple

import torch
from torch import nn


class MLP(nn.Module):
    """Five modules: fc1 -> act -> fc2 -> act2 -> head."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(4, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(x + self.inner(x))


class Nested(nn.Module):
    """Nested modules in a ModuleList."""

    def __init__(self, width: int = 8, depth: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


class CalledTwice(nn.Module):
    """`shared` runs twice in one forward."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.last = nn.Linear(4, 2)

    def forward(self, x):
        return self.last(self.shared(torch.tanh(self.shared(x))))


Pair = namedtuple("Pair", ["hidden", "gate"])


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        h = self.proj(x)
        return h, torch.sigmoid(h)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        h = self.proj(x)
        return {"hidden": h, "pair": Pair(h * 2, torch.sigmoid(h))}


class KeywordOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x, *, scale: float = 1.0, bias=None):
        out = self.proj(x) * scale
        return out if bias is None else out + bias


class Structured(nn.Module):
    """Submodules with tuple, dict and keyword-only interfaces."""

    def __init__(self):
        super().__init__()
        self.tuple_out = TupleOut()
        self.dict_out = DictOut()
        self.kw = KeywordOnly()

    def forward(self, x):
        h, g = self.tuple_out(x)
        d = self.dict_out(h * g)
        return self.kw(d["hidden"] + d["pair"].gate, scale=2.0, bias=d["pair"].hidden)
