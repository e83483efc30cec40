"""AO-FL's trainer: the joint-objective trainer on AO-FL's objective (no critic)."""
from __future__ import annotations

from ..models.aofl import AOFLObjective
from .joint import JointTrainer


class AOFLTrainer(JointTrainer):
    objective_class = AOFLObjective
