"""Ablations as named variants of a model: config switches only. IIDAF's are the paper's Tables
5–7; its peers' remove their own named parts (docs/models/).

Each variant is a row of a comparison, named `model[...]`; its seeds rows, checkpoints and
predictions carry that name (`run_name`), so variants resume and compare independently. The
full model comes first: p-values are against it. `--ablation KIND` varies the first `-m` model
that has that kind.
"""
from __future__ import annotations

from ..errors import ConfigError, UnknownNameError

KINDS = ("modules", "losses", "modalities")

# Table 5: the modalities used; the full model uses all three whatever --modalities says.
MODALITY_SETS = {"": "tav", "[t]": "t", "[a]": "a", "[v]": "v", "[t+a]": "ta", "[t+v]": "tv",
                 "[a+v]": "av"}

# {model: {kind: {suffix: overrides}}}; the empty suffix is the full model.
PARTS: dict[str, dict[str, dict[str, dict]]] = {
    "iidaf": {
        # Table 6: each module replaced by its plain counterpart (see IIDAF's docstring).
        "modules": {"": {}, "[-iamd]": {"use_iamd": False}, "[-mic]": {"use_mic": False},
                    "[-sgaff]": {"use_sgaff": False}},
        # Table 7: each loss term of eq. 23 left out.
        "losses": {"": {}, "[-L_IN]": {"lambda_in": 0}, "[-L_S]": {"lambda_s": 0},
                   "[-L_H]": {"lambda_h": 0}, "[-L_RE]": {"lambda_re": 0},
                   "[-L_MI]": {"lambda_mi": 0}},
    },
    "aofl": {
        "modules": {"": {}, "[-opr]": {"use_opr": False}},
        "losses": {"": {}, "[-L_CEN]": {"lambda_cen": 0}, "[-L_AAC]": {"lambda_aac": 0},
                   "[-L_CSR]": {"lambda_csr": 0}},
    },
    "mgrl": {
        "modules": {"": {}, "[-adaptive]": {"adaptive_contribution": False}},
        "losses": {"": {}, "[-L_MC]": {"lambda_mc": 0}, "[-L_MAR]": {"lambda_mar": 0},
                   "[-L_CON]": {"lambda_con": 0}},
    },
    "fdrl": {
        "modules": {"": {}, "[coarse]": {"granularity": "coarse"}},
        "losses": {"": {}, "[-L_FA]": {"lambda_fa": 0}, "[-L_FD]": {"lambda_fd": 0},
                   "[-L_REC]": {"lambda_rec": 0}},
    },
}


def models_with(ablation: str) -> list[str]:
    if ablation not in KINDS:
        raise UnknownNameError(f"unknown ablation '{ablation}': choose one of {', '.join(KINDS)}")
    return [model for model, kinds in PARTS.items() if ablation in kinds or ablation == "modalities"]


def variants(model: str, ablation: str) -> dict[str, dict]:
    """{variant name: its config overrides} of one ablation of `model`, the full model first."""
    if model not in models_with(ablation):
        raise ConfigError(f"--ablation {ablation}: {model} has no such variants; models with "
                          f"them: {', '.join(models_with(ablation))}")
    if ablation == "modalities":
        return {f"{model}{suffix}": {"modalities": modalities}
                for suffix, modalities in MODALITY_SETS.items()}
    return {f"{model}{suffix}": overrides for suffix, overrides in PARTS[model][ablation].items()}


def ablated_model(models: list[str], ablation: str) -> str:
    """The model an ablation varies: the first of `models` that has it."""
    candidates = models_with(ablation)
    for model in models:
        if model in candidates:
            return model
    raise ConfigError(f"--ablation {ablation} varies one of {', '.join(candidates)}: add -m "
                      f"{candidates[0]}")
