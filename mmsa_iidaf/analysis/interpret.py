"""The paper's interpretability results from one checkpoint, on the test split: of IIDAF, or of a
disentanglement peer (AO-FL, MGRL, FDRL), whose shared and specific features are measured the
same way, so that "disentangled" is compared across methods.

- `tsne_figure`: t-SNE of every modality's shared r_m and specific u_m (Fig. 4);
- `gates_figure` (IIDAF): the fusion gate γ and 1 − γ by sentiment class, and the attention
  mask's α, β per modality by class (Fig. 5);
- `importance_table` (IIDAF): full, shared-only g(s) and specific-only g(p) predictions, their
  metrics and the relative drop against the full model (Table 8);
- `disentanglement_table`: HSIC(u_m, r_m), scale-free CMD between shared features, linear probes
  of the modality from r and from u, and the label R² that u adds to r.

Figures are drawn on matplotlib `Figure` objects, not pyplot: saved to PNG by the Agg canvas,
with no display and no global figure state.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.manifold import TSNE
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GroupKFold, KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmsa_iidaf import registry
from mmsa_iidaf.errors import UserError
from mmsa_iidaf.losses import hsic, scale_free_cmd

from .checkpoint import LoadedRun, in_order

MODALITY_NAMES = {"t": "text", "a": "audio", "v": "vision"}
MODALITY_COLOURS = {"t": "tab:blue", "a": "tab:orange", "v": "tab:green"}
# Metrics where a larger value is worse: their drop is the relative increase.
LOWER_IS_BETTER = ("MAE", "Loss")
PREDICTIONS = (("full", "M"), ("shared_only", "M_shared"), ("specific_only", "M_specific"))


DISENTANGLING = ("iidaf", "aofl", "mgrl", "fdrl")


def collect(run: LoadedRun) -> dict:
    """The trainer's `predict` on the test split, in file order: predictions, labels, every
    modality's shared and specific features; IIDAF's also γ, the branch predictions and the
    attention mask's α and β per modality."""
    name = run.args["model_name"]
    if name not in DISENTANGLING:
        raise UserError(
            f"the analysis needs a checkpoint of a model with shared and specific features "
            f"({', '.join(DISENTANGLING)}); {run.checkpoint} is a '{name}' model: evaluate it "
            f"with the comparison or robustness tools instead"
        )
    model = run.model.Model
    if name == "iidaf" and not model.settings.use_sgaff:
        raise UserError(
            f"{run.checkpoint} was trained without SGAFF (use_sgaff false): it has no gate γ and "
            f"no shared-only / specific-only predictions to analyse"
        )
    predicted = run.trainer.predict(run.model, in_order(run.loaders["test"]))
    predicted["modalities"] = model.modalities
    return predicted


def has_gate(predicted: dict) -> bool:
    """IIDAF's SGAFF outputs (γ and the branch predictions): what Fig. 5 and Table 8 need."""
    return all(key in predicted for key in ("gamma", "M_shared", "M_specific"))


def sentiment_classes(labels: np.ndarray, train_mode: str) -> np.ndarray:
    """Class names per sample: negative / neutral / positive from a regression score's sign
    (< 0, 0, > 0), or "class k" for a classification label."""
    labels = np.asarray(labels).reshape(-1)
    if train_mode == "classification":
        return np.array([f"class {int(label)}" for label in labels])
    return np.where(labels < 0, "negative", np.where(labels > 0, "positive", "neutral"))


def class_order(classes: np.ndarray) -> list[str]:
    known = ["negative", "neutral", "positive"]
    present = set(classes.tolist())
    return [c for c in known if c in present] + sorted(present - set(known))


# --- Fig. 4 -----------------------------------------------------------------------------------

def tsne_figure(predicted: dict, path, max_samples: int = 1000, seed: int = 0) -> int:
    """t-SNE of r_m and u_m of every modality (one point per sample, modality and part), coloured
    by modality, marked shared (circle) / specific (cross). At most `max_samples` test samples
    (a fixed random subset) keep t-SNE's cost bounded. Returns the number of samples drawn."""
    modalities = predicted["modalities"]
    count = len(predicted["labels"])
    chosen = np.arange(count)
    if count > max_samples:
        chosen = np.sort(np.random.default_rng(seed).choice(count, max_samples, replace=False))
    blocks, tags = [], []
    for part in ("shared", "specific"):
        for m in modalities:
            blocks.append(predicted[f"{part}_{m}"][chosen])
            tags.append((part, m))
    points = np.concatenate(blocks)
    perplexity = min(30.0, (len(points) - 1) / 3)
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca",
                    random_state=seed).fit_transform(points)

    figure = Figure(figsize=(7, 6))
    axis = figure.subplots()
    start = 0
    for (part, m), block in zip(tags, blocks):
        xy = embedded[start:start + len(block)]
        start += len(block)
        axis.scatter(xy[:, 0], xy[:, 1], s=14, c=MODALITY_COLOURS[m], alpha=0.7,
                     marker="o" if part == "shared" else "x", linewidths=1)
    handles = [Patch(color=MODALITY_COLOURS[m], label=MODALITY_NAMES[m]) for m in modalities]
    handles += [Line2D([], [], marker="o", color="grey", linestyle="", label="shared r_m"),
                Line2D([], [], marker="x", color="grey", linestyle="", label="specific u_m")]
    axis.legend(handles=handles, loc="best", fontsize=8)
    axis.set_title(f"t-SNE of shared and specific features, test split ({len(chosen)} samples)")
    axis.set_xlabel("t-SNE 1")
    axis.set_ylabel("t-SNE 2")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return len(chosen)


# --- Fig. 5 -----------------------------------------------------------------------------------

def _paired_boxes(axis, groups: list[str], series: list[tuple[str, str, list[np.ndarray]]]):
    """Side-by-side box plots: for each group, one box per (label, colour, values per group)."""
    width = 0.8 / len(series)
    for index, (label, colour, values) in enumerate(series):
        positions = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        boxes = axis.boxplot(values, positions=positions, widths=width * 0.9, patch_artist=True,
                             showfliers=False)
        for box in boxes["boxes"]:
            box.set_facecolor(colour)
            box.set_alpha(0.7)
    axis.set_xticks(range(len(groups)), groups)
    axis.legend(handles=[Patch(color=colour, alpha=0.7, label=label)
                         for label, colour, _ in series], fontsize=8, loc="best")


def gates_figure(predicted: dict, classes: np.ndarray, path) -> None:
    """Left: γ (weight of the shared branch g(s)) and 1 − γ (of the specific branch g(p)) per
    sentiment class. Then, per modality, the attention mask's α (how much of V_r flows into u)
    and β (of V_u into r), each a sample's mean over channels, per class (IAMD models only)."""
    order = class_order(classes)
    counts = [f"{c}\n(n={int((classes == c).sum())})" for c in order]
    gamma = predicted["gamma"].reshape(-1)
    masked = [m for m in predicted["modalities"] if f"mask_alpha_{m}" in predicted]
    figure = Figure(figsize=(5 * (1 + len(masked)), 4.5))
    axes = figure.subplots(1, 1 + len(masked), squeeze=False)
    axis = axes[0, 0]
    _paired_boxes(axis, counts, [
        ("γ: shared branch g(s)", "tab:purple", [gamma[classes == c] for c in order]),
        ("1 − γ: specific branch g(p)", "tab:olive", [1 - gamma[classes == c] for c in order]),
    ])
    axis.set_title("Fusion gate by sentiment class")
    axis.set_xlabel("sentiment class (test split)")
    axis.set_ylabel("branch weight")
    for axis, m in zip(axes[0, 1:], masked):
        alpha = predicted[f"mask_alpha_{m}"].mean(axis=1)
        beta = predicted[f"mask_beta_{m}"].mean(axis=1)
        _paired_boxes(axis, counts, [
            ("α: shared → specific", "tab:red", [alpha[classes == c] for c in order]),
            ("β: specific → shared", "tab:cyan", [beta[classes == c] for c in order]),
        ])
        axis.set_title(f"Attention mask, {MODALITY_NAMES[m]} (mean over channels)")
        axis.set_xlabel("sentiment class (test split)")
        axis.set_ylabel("mask weight")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# --- Table 8 ----------------------------------------------------------------------------------

def importance_table(predicted: dict, args) -> pd.DataFrame:
    """One row per prediction (full ŷ, shared-only g(s), specific-only g(p)): every metric of the
    dataset, and `{metric}_drop`, the relative loss of performance against the full model
    ((full − x) / |full| where larger is better, (x − full) / |full| for MAE)."""
    metrics = registry.metrics_for(args)
    labels = torch.from_numpy(predicted["labels"])
    scores = {name: metrics(torch.from_numpy(predicted[key]), labels)
              for name, key in PREDICTIONS}
    full = scores["full"]
    rows = []
    for name, key in PREDICTIONS:
        row = {"prediction": name, "output": key, **scores[name]}
        for metric, value in scores[name].items():
            reference = full[metric]
            worse = value - reference if metric in LOWER_IS_BETTER else reference - value
            row[f"{metric}_drop"] = worse / abs(reference) if reference else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


# --- the numbers behind "disentangled" --------------------------------------------------------

def modality_probe(features: dict[str, np.ndarray], folds: int = 5) -> tuple[float, float]:
    """Cross-validated accuracy of a linear probe (standardised logistic regression) at telling
    which modality a feature vector comes from, and the chance level (the largest class share).
    Folds split by sample, so that no sample's other modalities are in the training folds."""
    modalities = list(features)
    points = np.concatenate([features[m] for m in modalities])
    truth = np.repeat(np.arange(len(modalities)), [len(features[m]) for m in modalities])
    groups = np.concatenate([np.arange(len(features[m])) for m in modalities])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splits = GroupKFold(n_splits=min(folds, len(np.unique(groups))))
    guessed = cross_val_predict(probe, points, truth, cv=splits, groups=groups)
    chance = np.bincount(truth).max() / len(truth)
    return float(accuracy_score(truth, guessed)), float(chance)


def label_r2(features: np.ndarray, labels: np.ndarray, folds: int = 5) -> float:
    """R² of the label from `features`: standardised ridge regression (penalty chosen inside each
    training fold), scored on the pooled out-of-fold predictions."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    splits = KFold(n_splits=min(folds, len(labels)), shuffle=True, random_state=0)
    return float(r2_score(labels, cross_val_predict(model, features, labels, cv=splits)))


def batch_hsic(shared: np.ndarray, specific: np.ndarray, batch: int) -> float:
    """HSIC(u, r) as the losses see it: the mean over consecutive batches of `batch` samples
    (the test loader's batches, in file order)."""
    values = [hsic(torch.from_numpy(shared[start:start + batch]),
                   torch.from_numpy(specific[start:start + batch])).item()
              for start in range(0, len(shared), batch)]
    return float(np.mean(values))


def disentanglement_table(predicted: dict, batch: int) -> pd.DataFrame:
    """Rows (measure, modality, value, reference, description), every measure computed here from
    the collected features, the same way for every model."""
    modalities = predicted["modalities"]
    rows = []
    for m in modalities:
        value = batch_hsic(predicted[f"shared_{m}"], predicted[f"specific_{m}"], batch)
        rows.append(("hsic_specific_shared", m, value, 0.0,
                     f"HSIC(u_{m}, r_{m}), Gaussian kernels, mean over batches of {batch}; "
                     f"0 = independent"))
    for a, b in combinations(modalities, 2):
        value = scale_free_cmd(torch.from_numpy(predicted[f"shared_{a}"]),
                               torch.from_numpy(predicted[f"shared_{b}"])).item()
        rows.append(("cmd_shared", f"{a}-{b}", value, 0.0,
                     "scale-free CMD (K=5, each side divided by its RMS) between the two "
                     "modalities' shared features; 0 = same distribution"))
    if len(modalities) > 1:
        for part, expect in (("shared", "should be near chance"),
                             ("specific", "should be well above chance")):
            accuracy, chance = modality_probe({m: predicted[f"{part}_{m}"] for m in modalities})
            rows.append((f"probe_modality_from_{part}", "".join(modalities), accuracy, chance,
                         f"cross-validated accuracy of a linear probe telling the modality from "
                         f"{'r' if part == 'shared' else 'u'} (reference: chance); {expect}"))
    labels = predicted["labels"]
    groups = [(m, [m]) for m in modalities] + ([("".join(modalities), modalities)]
                                               if len(modalities) > 1 else [])
    for name, members in groups:
        shared = np.concatenate([predicted[f"shared_{m}"] for m in members], axis=1)
        specific = np.concatenate([predicted[f"specific_{m}"] for m in members], axis=1)
        from_shared = label_r2(shared, labels)
        both = label_r2(np.concatenate([specific, shared], axis=1), labels)
        rows.append(("label_r2_shared", name, from_shared, math.nan,
                     "cross-validated R² of the label from r (ridge)"))
        rows.append(("label_r2_specific_and_shared", name, both, math.nan,
                     "cross-validated R² of the label from [u, r] (ridge)"))
        rows.append(("label_r2_specific_beyond_shared", name, both - from_shared, 0.0,
                     "R² from [u, r] minus R² from r: label information u adds to r"))
    return pd.DataFrame(rows, columns=["measure", "modality", "value", "reference",
                                       "description"])
