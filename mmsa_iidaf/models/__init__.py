"""Models added to MMSA by this plugin."""
from .iidaf import IIDAF, IIDAFObjective

__all__ = ["IIDAF", "IIDAFObjective"]
