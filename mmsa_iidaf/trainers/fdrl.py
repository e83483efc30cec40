"""FDRL's trainer: the joint-objective trainer on FDRL's objective (no critic)."""
from __future__ import annotations

from ..models.fdrl import FDRLObjective
from .joint import JointTrainer


class FDRLTrainer(JointTrainer):
    objective_class = FDRLObjective
