"""FDRL after Sun et al. (fine-grained disentangled representation learning), on IIDAF's encoder
front end (docs/models/fdrl.md: what the paper specifies, what it leaves open, what was chosen)."""
from .model import FDRL
from .objective import FDRLObjective

__all__ = ["FDRL", "FDRLObjective"]
