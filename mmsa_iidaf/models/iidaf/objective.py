"""§2.5 the joint objective (eq. 23):
L = L_T + λ1 L_IN + λ2 L_S + λ3 L_H + λ4 L_RE + λ5 L_MI (+ λ_branch L_BR, a departure, off in
the paper's reading).
"""
from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor

from mmsa_iidaf.losses import cmd, hsic, range_cmd
from mmsa_iidaf.losses.task import task_loss, task_targets

from .iamd import invertibility_loss, reconstruction_loss
from .settings import iidaf_settings

CMD_MOMENTS = 5  # K of eq. 12-13
TERMS = ("L_T", "L_IN", "L_S", "L_H", "L_RE", "L_MI", "L_R", "L_C", "L_BR")


def _mean(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


class IIDAFObjective:
    """Eq. 23 for an `IIDAF` built from the same config.

    A term is computed only when its λ is > 0 and its module exists (L_IN and L_RE need IAMD, L_MI
    needs MIC, L_S needs two modalities); otherwise it is reported as a 0.0 tensor with no graph.
    With fewer than three modalities, the paper's 1/3 averages become averages over what exists:
    L_S is the mean CMD over modality pairs, and L_H the mean HSIC over pairs of specific features
    plus the mean over modalities of HSIC(r_m, u_m) — with three modalities exactly eq. 13 and 15.
    """

    terms = TERMS

    def __init__(self, args):
        self.settings = iidaf_settings(args)
        self.train_mode = self.settings.train_mode
        self.weights = {
            "L_IN": float(self.settings.lambda_in),
            "L_S": float(self.settings.lambda_s),
            "L_H": float(self.settings.lambda_h),
            "L_RE": float(self.settings.lambda_re),
            "L_MI": float(self.settings.lambda_mi),
            "L_BR": float(self.settings.lambda_branch),
        }
        self.scale_free_alignment = self.settings.cmd_scale == "range"

    def task_targets(self, labels: Tensor) -> Tensor:
        """MMSA labels (B,) or (B, 1) -> (B, 1) float scores (regression) or (B,) long classes."""
        return task_targets(labels, self.train_mode)

    def task_loss(self, prediction: Tensor, labels: Tensor) -> Tensor:
        """L_T: MSE for regression, cross-entropy for classification (§2.5)."""
        return task_loss(prediction, labels, self.train_mode)

    def __call__(self, model, outputs: dict, labels: Tensor) -> dict[str, Tensor]:
        """Returns {'L_T', 'L_IN', 'L_S', 'L_H', 'L_RE', 'L_MI', 'L_R', 'L_C', 'L_BR', 'total'}
        scalars, plus detached per-part values for the logs: 'L_R[t-a]', 'L_R[t-z]', ... (each
        InfoNCE term) and 'L_C[t]', ... (each modality's conditional-MI estimate).

        L_BR (λ_branch > 0, SGAFF only): L_T of g(s) and of g(p), averaged: each branch must
        predict on its own, so the gate γ weighs two real predictors.
        """
        targets = self.task_targets(labels)
        prediction = outputs["M"]
        zero = prediction.new_zeros(())
        terms = dict.fromkeys(TERMS, zero)
        terms["L_T"] = self.task_loss(prediction, targets)

        shared, specific = outputs["shared"], outputs["specific"]
        modalities = list(shared)
        pairs = list(combinations(modalities, 2))
        use_iamd = bool(self.settings.use_iamd)
        if use_iamd and not model.training and (self.weights["L_IN"] > 0
                                                 or self.weights["L_RE"] > 0):
            raise ValueError("IIDAFObjective scores a training forward pass: in eval mode the "
                             "model skips F⁻¹ and the decoder (L_IN, L_RE); call model.train() "
                             "before the forward pass, or set lambda_in and lambda_re to 0")
        if self.weights["L_IN"] > 0 and use_iamd:
            recovered = self._require(outputs["latent_recovered"], "F⁻¹ outputs (L_IN)")
            terms["L_IN"] = invertibility_loss(recovered, outputs["latent"])
        if self.weights["L_RE"] > 0 and use_iamd:
            reconstruction = self._require(outputs["reconstruction"], "a decoder (L_RE)")
            terms["L_RE"] = reconstruction_loss(reconstruction, outputs["encoded"])
        if self.weights["L_S"] > 0 and pairs:
            # Eq. 12 assumes features bounded in [a, b]; r is not, so by default [a, b] is the
            # batch's range (cmd_scale 'range') and L_S cannot fall by shrinking r; 'none' is
            # MISA's code (|b − a| = 1), which r can satisfy by shrinking.
            discrepancy = range_cmd if self.scale_free_alignment else cmd
            terms["L_S"] = _mean([discrepancy(shared[a], shared[b], CMD_MOMENTS) for a, b in pairs])
        if self.weights["L_H"] > 0:
            own = _mean([hsic(shared[m], specific[m]) for m in modalities])
            across = _mean([hsic(specific[a], specific[b]) for a, b in pairs]) if pairs else zero
            terms["L_H"] = across + own
        if self.weights["L_MI"] > 0 and self.settings.use_mic:
            mic = self._require(model.mic, "a MIC module (L_MI)")
            mutual_information = mic(shared, specific, targets, self.train_mode)
            terms.update({key: mutual_information[key] for key in ("L_R", "L_C", "L_MI")})
            parts = {f"L_R[{pair}]": value for pair, value in mutual_information["pairs"].items()}
            parts.update({f"L_C[{m}]": value
                          for m, value in mutual_information["conditional"].items()})
        else:
            parts = {}
        if self.weights["L_BR"] > 0 and outputs.get("M_shared") is not None:
            terms["L_BR"] = 0.5 * (self.task_loss(outputs["M_shared"], targets)
                                   + self.task_loss(outputs["M_specific"], targets))

        total = terms["L_T"]
        for key, weight in self.weights.items():
            if weight > 0:
                total = total + weight * terms[key]
        terms["total"] = total
        terms.update({key: value.detach() for key, value in parts.items()})
        return terms

    @staticmethod
    def _require(part, what: str):
        if part is None or (isinstance(part, dict) and not part):
            raise ValueError(
                f"IIDAFObjective needs {what}, which the model does not have: build the model and "
                f"the objective from the same config"
            )
        return part

    def discriminator_loss(self, model, outputs: dict, labels: Tensor) -> Tensor | None:
        """MIC's discriminator loss (BCE of φ, eq. 18) on detached features; None without MIC.

        The trainer steps φ's optimizer on it separately from the main loss.
        """
        if self.weights["L_MI"] == 0 or not self.settings.use_mic:
            return None
        mic = self._require(model.mic, "a MIC module (L_MI)")
        shared = {m: r.detach() for m, r in outputs["shared"].items()}
        specific = {m: u.detach() for m, u in outputs["specific"].items()}
        return mic.discriminator_loss(shared, specific, self.task_targets(labels), self.train_mode)
