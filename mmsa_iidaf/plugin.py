"""What this plugin registers in MMSA: its models and its datasets (configs/ holds their
config sections)."""
from . import registry
from .metrics import binary_metrics


def register_all() -> None:
    from .models.iidaf import IIDAF
    from .trainers.iidaf import IIDAFTrainer

    registry.register_model("iidaf", IIDAF, IIDAFTrainer, classification=True)
    # UR-FUNNY: humour (1) or not (0) of a punchline; files from `python -m
    # mmsa_iidaf.data.ur_funny`. MMSA's models, which regress, take MOSI's settings.
    registry.register_dataset("ur_funny", task="classification", metrics=binary_metrics,
                              label_range=(0.0, 1.0), settings_like="mosi")
