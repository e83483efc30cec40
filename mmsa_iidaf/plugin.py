"""What this plugin registers in MMSA: its models and its datasets (configs/ holds their
config sections)."""
from . import registry
from .metrics import binary_metrics


def register_all() -> None:
    from .models.aofl import AOFL
    from .models.fdrl import FDRL
    from .models.iidaf import IIDAF
    from .models.mgrl import MGRL
    from .trainers.aofl import AOFLTrainer
    from .trainers.fdrl import FDRLTrainer
    from .trainers.iidaf import IIDAFTrainer
    from .trainers.mgrl import MGRLTrainer

    registry.register_model("iidaf", IIDAF, IIDAFTrainer, classification=True)
    # IIDAF's disentanglement peers, on IIDAF's encoder front end (docs/models/).
    registry.register_model("aofl", AOFL, AOFLTrainer, classification=True)
    registry.register_model("mgrl", MGRL, MGRLTrainer, classification=True)
    registry.register_model("fdrl", FDRL, FDRLTrainer, classification=True)
    # UR-FUNNY: humour (1) or not (0) of a punchline; files from `python -m
    # mmsa_iidaf.data.ur_funny`. MMSA's models, which regress, take MOSI's settings.
    registry.register_dataset("ur_funny", task="classification", metrics=binary_metrics,
                              label_range=(0.0, 1.0), settings_like="mosi")
