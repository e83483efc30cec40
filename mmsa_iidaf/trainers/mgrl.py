"""MGRL's trainer: the joint-objective trainer on MGRL's objective; its modality classifier is
the critic, stepped first on every batch."""
from __future__ import annotations

from ..models.mgrl import MGRLObjective
from .joint import JointTrainer


class MGRLTrainer(JointTrainer):
    objective_class = MGRLObjective
