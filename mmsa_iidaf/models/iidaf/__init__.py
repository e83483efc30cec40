"""IIDAF (Yang, Sun, Zhu, 2026): the model and its joint objective."""
from .model import IIDAF
from .objective import IIDAFObjective

__all__ = ["IIDAF", "IIDAFObjective"]
