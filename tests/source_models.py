"""Small hand-written modules for the `.source` tests."""

from __future__ import annotations

import torch
from torch import nn


def scale_and_shift(x, scale, shift=0.0):
    doubled = x * scale
    return torch.tanh(doubled) + shift


class Looped(nn.Module):
    """A loop, a nested call, a tuple assignment, keyword arguments and a helper function."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.gate = nn.Linear(4, 4)

    def forward(self, x, *, shift=0.5):
        h = x
        for _ in range(3):
            h = self.layer(h)
        a, b = torch.chunk(torch.cat([h, h * 2], dim=-1), 2, dim=-1)
        mixed = scale_and_shift(a + b, scale=2.0, shift=shift)
        return self.gate(torch.relu(mixed))


class Child(Looped):
    """Calls its parent's forward through zero-argument super()."""

    def forward(self, x, *, shift=0.5):
        out = super().forward(x, shift=shift)
        return out * 3
