"""AO-FL's objective: L = L_T + λ_CEN L_CEN + λ_AAC L_AAC + λ_CSR L_CSR.

- L_CEN: for every ordered pair of modalities (s, m), g_{s,i} is pulled to g_{m,i} and pushed from
  every modality's shared feature g_{k,j} of the samples j whose sentiment class differs from
  i's (negative / neutral / positive by the sign of a regression label; the class otherwise).
- L_AAC: within each modality, g_{m,i} and h_{m,i} at least `aac_min_angle` apart.
- L_CSR: φ_{m,i} = ∠(g_{s,i}, g_{m,i}) smaller than θ_{m,i} = ∠(h_{m,i}, g_{m,i}), by `csr_margin`
  in cosine, for every s ≠ m.
Each cross-modal term averages over the pairs that exist (0 with one modality). L_T is IIDAF's
task loss (MSE, or cross-entropy), so that the comparison isolates the disentanglement.
"""
from __future__ import annotations

from itertools import permutations

import torch
from torch import Tensor

from mmsa_iidaf.losses.angular import angle_floor, cosine_ranking, label_aware_infonce
from mmsa_iidaf.losses.task import sentiment_classes

from ..common import PeerObjective
from .model import aofl_settings

TERMS = ("L_T", "L_CEN", "L_AAC", "L_CSR")


class AOFLObjective(PeerObjective):
    terms = TERMS

    def __init__(self, args):
        settings = aofl_settings(args)
        super().__init__(settings, {"L_CEN": float(settings.lambda_cen),
                                    "L_AAC": float(settings.lambda_aac),
                                    "L_CSR": float(settings.lambda_csr)})

    def consistency(self, shared: dict, classes: Tensor) -> Tensor:
        pairs = list(permutations(shared, 2))
        negatives = torch.cat(list(shared.values()))
        negative_classes = classes.repeat(len(shared))
        s = self.settings
        return torch.stack([
            label_aware_infonce(shared[a], shared[b], negatives, classes, negative_classes,
                                float(s.cen_temperature)) for a, b in pairs]).mean()

    def angle_floor(self, shared: dict, specific: dict) -> Tensor:
        return torch.stack([angle_floor(shared[m], specific[m], float(self.settings.aac_min_angle))
                            for m in shared]).mean()

    def ranking(self, shared: dict, specific: dict) -> Tensor:
        return torch.stack([
            cosine_ranking(shared[s], shared[m], specific[m], shared[m],
                           float(self.settings.csr_margin))
            for s, m in permutations(shared, 2)]).mean()

    def __call__(self, model, outputs: dict, labels: Tensor) -> dict:
        shared, specific = outputs["shared"], outputs["specific"]
        cross_modal = len(shared) > 1
        return self.combine(outputs["M"], labels, {
            "L_CEN": (lambda: self.consistency(shared, sentiment_classes(labels, self.train_mode)))
            if cross_modal else None,
            "L_AAC": lambda: self.angle_floor(shared, specific),
            "L_CSR": (lambda: self.ranking(shared, specific)) if cross_modal else None,
        })
