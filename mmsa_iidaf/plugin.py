"""What this plugin registers in MMSA: its models and its datasets (configs/ holds their
config sections)."""
from . import registry


def register_all() -> None:
    from .models.iidaf import IIDAF
    from .trainers.iidaf import IIDAFTrainer

    registry.register_model("iidaf", IIDAF, IIDAFTrainer, classification=True)
