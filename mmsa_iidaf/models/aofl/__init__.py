"""AO-FL after Che et al. (angle-optimised partial disentanglement), on IIDAF's encoder front end
(docs/models/aofl.md: what the paper specifies, what it leaves open, what was chosen)."""
from .model import AOFL
from .objective import AOFLObjective

__all__ = ["AOFL", "AOFLObjective"]
