"""FDRL's objective: L = L_T + λ_FA L_FA + λ_FD L_FD + λ_REC L_REC.

granularity 'fine' (the method):
- L_FA, fine-grained alignment, for every pair of modalities (m, s): each sample's g_m and g_s
  point the same way (instance level, 1 − cos), and within each sentiment class the two
  modalities' shared features have the same distribution (class level, scale-free CMD).
- L_FD, fine-grained disparity: each sample's p_m is orthogonal to its g_m and to its p_s of
  every other modality (instance level, cos²).
granularity 'coarse' (the ablation, MISA's batch-level forms): L_FA one scale-free CMD per pair
over the batch; L_FD MISA's soft orthogonality of the batch's p_m to g_m and to p_s.
- L_REC: mean squared error of X̂_m to X_m (detached: the decoder follows the encoder, the
  encoder is not pulled towards what is easy to rebuild).
Pairwise terms average over the pairs (0 with one modality). L_T is IIDAF's task loss.
"""
from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmsa_iidaf.losses.alignment import (class_conditional_cmd, instance_alignment,
                                         instance_disparity, soft_orthogonality)
from mmsa_iidaf.losses.cmd import scale_free_cmd
from mmsa_iidaf.losses.task import sentiment_classes

from ..common import PeerObjective
from .model import fdrl_settings

TERMS = ("L_T", "L_FA", "L_FD", "L_REC")


class FDRLObjective(PeerObjective):
    terms = TERMS

    def __init__(self, args):
        settings = fdrl_settings(args)
        super().__init__(settings, {"L_FA": float(settings.lambda_fa),
                                    "L_FD": float(settings.lambda_fd),
                                    "L_REC": float(settings.lambda_rec)})
        self.fine = settings.granularity == "fine"
        self.moments = int(settings.cmd_moments)

    def alignment(self, shared: dict, classes: Tensor) -> Tensor:
        if self.fine:
            terms = [instance_alignment(shared[m], shared[s])
                     + class_conditional_cmd(shared[m], shared[s], classes, self.moments)
                     for m, s in combinations(shared, 2)]
        else:
            terms = [scale_free_cmd(shared[m], shared[s], self.moments)
                     for m, s in combinations(shared, 2)]
        return torch.stack(terms).mean()

    def disparity(self, shared: dict, specific: dict) -> Tensor:
        apart = instance_disparity if self.fine else soft_orthogonality
        terms = [apart(specific[m], shared[m]) for m in specific]
        terms += [apart(specific[m], specific[s]) for m, s in combinations(specific, 2)]
        return torch.stack(terms).mean()

    def reconstruction(self, outputs: dict) -> Tensor:
        return torch.stack([F.mse_loss(outputs["reconstructed"][m], outputs["encoded"][m].detach())
                            for m in outputs["encoded"]]).mean()

    def __call__(self, model, outputs: dict, labels: Tensor) -> dict:
        shared, specific = outputs["shared"], outputs["specific"]
        return self.combine(outputs["M"], labels, {
            "L_FA": (lambda: self.alignment(shared, sentiment_classes(labels, self.train_mode)))
            if len(shared) > 1 else None,
            "L_FD": lambda: self.disparity(shared, specific),
            "L_REC": lambda: self.reconstruction(outputs),
        })
