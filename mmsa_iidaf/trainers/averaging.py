"""`ema_decay: d` (0 < d < 1; 0, the default, is off): validate, save and test an exponential
moving average of the trained weights instead of the last step's.

Why: on mosi_utt (1,447 training clips, batches of 32) the weights after one step are a noisy
point, and the best-on-validation checkpoint is chosen among such points; the average of the last
~1/(1 − d) steps is a steadier one. Training is unchanged: the optimiser steps the live weights and
the average follows them (torch's EMA rule, `swa_utils.get_ema_multi_avg_fn`); the average is
swapped in for each validation and the checkpoint, which the test reads, holds it. Only the
weights that train are averaged (a frozen encoder has no steps to average); buffers are the live
model's.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ..errors import config_number


def ema_decay(args) -> float:
    """The run's `ema_decay`, checked: ConfigError in one line unless 0 <= d < 1."""
    return config_number(args, "ema_decay", 0.0, lambda decay: 0 <= decay < 1,
                         "in [0, 1) (0: off; e.g. 0.95 averages about the last 20 steps)")


class WeightAverage:
    """An exponential moving average of `parameters` (those that train), swapped in on demand."""

    def __init__(self, parameters, decay: float):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.average = [p.detach().clone() for p in self.parameters]
        self._update = get_ema_multi_avg_fn(decay)
        self.steps = 0

    def update(self) -> None:
        """After each optimiser step."""
        self.steps += 1
        self._update(self.average, [p.detach() for p in self.parameters], self.steps)

    @contextmanager
    def swapped_in(self):
        """The averaged weights in the model for the block; the live ones back after it."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.parameters]
            for parameter, averaged in zip(self.parameters, self.average):
                parameter.copy_(averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, kept in zip(self.parameters, live):
                    parameter.copy_(kept)
