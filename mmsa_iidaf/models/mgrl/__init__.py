"""MGRL after Cho (modality-guided refinement learning), on IIDAF's encoder front end
(docs/models/mgrl.md: what the paper specifies, what it leaves open, what was chosen)."""
from .model import MGRL
from .objective import MGRLObjective

__all__ = ["MGRL", "MGRLObjective"]
