"""Numbers that show whether each part of IIDAF works, measured on one split of a trained model.

`diagnose` answers, per modality: did L_S align shared features, or shrink them (`shared_rms`,
`cmd_shared_standardised`)? Does the attention mask mix (`mask_alpha_mean`, `mask_beta_mean`,
against 1/D)? Are u and r independent (`hsic_shared_specific`)? Do the InfoNCE terms beat chance
(`infonce` against `infonce_chance` = ln B)? What does the conditional-MI critic see
(`conditional_mi`, `discriminator_bce`)? Does the gate γ vary from sample to sample
(`gamma_std`)? Batch-wise numbers use batches of the training batch size, as the losses do.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations

import torch

from mmsa_iidaf.losses import hsic, root_mean_square, scale_free_cmd

from .objective import CMD_MOMENTS


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


@torch.inference_mode()
def diagnose(model, batches: Iterable[tuple], train_mode: str) -> dict:
    """`model`: an `IIDAF` (eval mode is set here); `batches`: (inputs, lengths, targets) per batch,
    as the trainer feeds them. Returns a JSON-ready dict (see the module docstring)."""
    model.eval()
    modalities = model.modalities
    per_batch = defaultdict(list)
    whole = defaultdict(list)
    batch_sizes = []
    for inputs, lengths, targets in batches:
        outputs = model(*inputs, **lengths)
        batch_sizes.append(targets.shape[0])
        for m in modalities:
            whole[f"shared_{m}"].append(outputs["shared"][m])
            whole[f"specific_{m}"].append(outputs["specific"][m])
            for key in ("mask_alpha", "mask_beta"):
                if m in outputs.get(key, {}):
                    whole[f"{key}_{m}"].append(outputs[key][m])
            per_batch[f"hsic_{m}"].append(hsic(outputs["shared"][m], outputs["specific"][m]).item())
        if outputs.get("gamma") is not None:
            whole["gamma"].append(outputs["gamma"])
        if model.mic is not None and targets.shape[0] > 1:
            mic = model.mic(outputs["shared"], outputs["specific"], targets, train_mode)
            for pair, value in mic["pairs"].items():
                per_batch[f"infonce_{pair}"].append(value.item())
            for m, value in mic["conditional"].items():
                per_batch[f"cmi_{m}"].append(value.item())
            critic = model.mic.critic_losses(outputs["shared"], outputs["specific"], targets,
                                             train_mode)
            for m, value in critic.items():
                per_batch[f"critic_{m}"].append(value.item())

    features = {key: torch.cat(values) for key, values in whole.items()}
    width = features[f"shared_{modalities[0]}"].shape[1]
    report = {
        "split_samples": int(sum(batch_sizes)),
        "batch_size": int(max(batch_sizes)),
        "modalities": modalities,
        "fused_modalities": "".join(m for m, on in zip(modalities, model.fused_modalities) if on),
        "width": int(width),
        "mask_uniform_weight": 1.0 / width,  # what a mask that does not mix gives: 1/D
        "gamma_mean": float(features["gamma"].mean()) if "gamma" in features else None,
        "gamma_std": float(features["gamma"].std()) if "gamma" in features else None,
        "shared_rms": {m: float(root_mean_square(features[f"shared_{m}"])) for m in modalities},
        "specific_rms": {m: float(root_mean_square(features[f"specific_{m}"]))
                         for m in modalities},
        "mask_alpha_mean": {m: float(features[f"mask_alpha_{m}"].mean())
                            for m in modalities if f"mask_alpha_{m}" in features},
        "mask_beta_mean": {m: float(features[f"mask_beta_{m}"].mean())
                           for m in modalities if f"mask_beta_{m}" in features},
        "hsic_shared_specific": {m: _mean(per_batch[f"hsic_{m}"]) for m in modalities},
        "cmd_shared_standardised": {
            f"{a}-{b}": float(scale_free_cmd(features[f"shared_{a}"], features[f"shared_{b}"],
                                             CMD_MOMENTS))
            for a, b in combinations(modalities, 2)
        },
    }
    if model.mic is not None:
        estimator = model.mic.estimator
        report.update({
            "cmi_estimator": estimator,
            "infonce": {key[len("infonce_"):]: _mean(values)
                        for key, values in per_batch.items() if key.startswith("infonce_")},
            "infonce_chance": math.log(report["batch_size"]),
            "conditional_mi": {m: _mean(per_batch[f"cmi_{m}"]) for m in modalities},
            # The critic's own loss on this split: φ's binary cross-entropy on kNN negatives
            # (ln 2 = chance) for the paper's estimator, else the two predictive heads' summed
            # cross-entropies; the other key is None, so every report has both.
            "discriminator_bce": ({m: _mean(per_batch[f"critic_{m}"]) for m in modalities}
                                  if estimator == "knn_discriminator" else None),
            "critic_loss": ({m: _mean(per_batch[f"critic_{m}"]) for m in modalities}
                            if estimator == "predictive" else None),
        })
    return report
