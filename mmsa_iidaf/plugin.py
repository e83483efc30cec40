"""What this plugin registers in MMSA: its models and its datasets (configs/ holds their
config sections)."""
from . import registry
from .metrics import binary_metrics


def register_all() -> None:
    from .models.aofl import AOFL
    from .models.aofl.model import aofl_settings
    from .models.fdrl import FDRL
    from .models.fdrl.model import fdrl_settings
    from .models.iidaf import IIDAF
    from .models.iidaf.settings import iidaf_settings
    from .models.mgrl import MGRL
    from .models.mgrl.model import mgrl_settings
    from .trainers.aofl import AOFLTrainer
    from .trainers.fdrl import FDRLTrainer
    from .trainers.iidaf import IIDAFTrainer
    from .trainers.mgrl import MGRLTrainer

    registry.register_model("iidaf", IIDAF, IIDAFTrainer, classification=True,
                            settings=iidaf_settings)
    # IIDAF's disentanglement peers, on IIDAF's encoder front end (docs/models/).
    registry.register_model("aofl", AOFL, AOFLTrainer, classification=True,
                            settings=aofl_settings)
    registry.register_model("mgrl", MGRL, MGRLTrainer, classification=True,
                            settings=mgrl_settings)
    registry.register_model("fdrl", FDRL, FDRLTrainer, classification=True,
                            settings=fdrl_settings)
    # UR-FUNNY: humour (1) or not (0) of a punchline; files from `python -m
    # mmsa_iidaf.data.ur_funny`. MMSA's models, which regress, take MOSI's settings.
    registry.register_dataset("ur_funny", task="classification", metrics=binary_metrics,
                              label_range=(0.0, 1.0), settings_like="mosi")
