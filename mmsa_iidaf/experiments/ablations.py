"""The paper's ablations (Tables 5–7) as named variants of `iidaf`: config switches only.

Each variant is a row of a comparison, named `iidaf[...]`; its seeds rows, checkpoints and
predictions carry that name (`run_name`), so variants resume and compare independently. The
full model, `iidaf`, comes first: p-values are against it.
"""
from __future__ import annotations

from ..errors import UnknownNameError

MODEL = "iidaf"

ABLATIONS: dict[str, dict[str, dict]] = {
    # Table 6: each module replaced by its plain counterpart (see IIDAF's docstring).
    "modules": {
        "iidaf": {},
        "iidaf[-iamd]": {"use_iamd": False},
        "iidaf[-mic]": {"use_mic": False},
        "iidaf[-sgaff]": {"use_sgaff": False},
    },
    # Table 7: each loss term of eq. 23 left out.
    "losses": {
        "iidaf": {},
        "iidaf[-L_IN]": {"lambda_in": 0},
        "iidaf[-L_S]": {"lambda_s": 0},
        "iidaf[-L_H]": {"lambda_h": 0},
        "iidaf[-L_RE]": {"lambda_re": 0},
        "iidaf[-L_MI]": {"lambda_mi": 0},
    },
    # Table 5: the modalities used; the full model uses all three whatever --modalities says.
    "modalities": {
        "iidaf": {"modalities": "tav"},
        "iidaf[t]": {"modalities": "t"},
        "iidaf[a]": {"modalities": "a"},
        "iidaf[v]": {"modalities": "v"},
        "iidaf[t+a]": {"modalities": "ta"},
        "iidaf[t+v]": {"modalities": "tv"},
        "iidaf[a+v]": {"modalities": "av"},
    },
}


def variants(ablation: str) -> dict[str, dict]:
    """{variant name: its config overrides} of one ablation, the full model first."""
    if ablation not in ABLATIONS:
        raise UnknownNameError(
            f"unknown ablation '{ablation}': choose one of {', '.join(ABLATIONS)}"
        )
    return ABLATIONS[ablation]
