"""The statistics of a comparison, as pure functions of tables and arrays (no files, no runs).

- Per model and metric: mean and sample standard deviation over seeds, and a paired t-test
  (`scipy.stats.ttest_rel`) against the reference model over the seeds both finished with the
  metric defined.
- Per model: the MAE difference to the reference over test samples, seeds pooled and paired by
  (seed, id), with a paired bootstrap interval (`scipy.stats.bootstrap`, percentile method).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

# Metrics where a smaller value is the better one; every other metric is better when larger.
LOWER_IS_BETTER = ("MAE", "Loss")


def paired_p_value(reference: pd.Series, other: pd.Series) -> float:
    """Two-sided paired t-test of `other` against `reference` (both indexed by seed) over the
    seeds where both are defined (Pearson's r is not, for a constant prediction); NaN with
    fewer than two such seeds."""
    common = reference.dropna().index.intersection(other.dropna().index)
    if len(common) < 2:
        return float("nan")
    return float(stats.ttest_rel(other.loc[common], reference.loc[common]).pvalue)


def seed_summary(rows: dict[str, pd.DataFrame], metrics: list[str]) -> pd.DataFrame:
    """One row per model (the keys of `rows`, the first one the reference): `model`,
    `n_seeds`, and per metric `{metric}_mean`, `{metric}_std` (ddof=1), `{metric}_p` (against
    the reference; NaN for the reference itself) and `{metric}_n`, the seeds where the metric is
    defined (Pearson's r is not, for a constant prediction); mean and std are over those. Each
    value of `rows` has a `seed` column and one column per metric."""
    names = list(rows)
    by_seed = {name: table.set_index("seed") for name, table in rows.items()}
    reference = by_seed[names[0]]
    records = []
    for name in names:
        table = by_seed[name]
        record = {"model": name, "n_seeds": len(table)}
        for metric in metrics:
            values = table[metric] if metric in table else pd.Series(dtype=float)
            record[f"{metric}_mean"] = values.mean()
            record[f"{metric}_std"] = values.std(ddof=1)
            record[f"{metric}_p"] = (float("nan") if name == names[0] or metric not in reference
                                     else paired_p_value(reference[metric], values))
        # After every mean, std and p: the table's first columns stay those of the issue.
        for metric in metrics:
            record[f"{metric}_n"] = int(table[metric].notna().sum()) if metric in table else 0
        records.append(record)
    return pd.DataFrame(records)


def paired_samples(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Test samples both models predicted, paired by (seed, id): columns `y_true`,
    `y_pred_reference`, `y_pred_other`. Inputs have columns seed, id, y_true, y_pred."""
    merged = reference.merge(other, on=["seed", "id"], suffixes=("_reference", "_other"))
    return merged.rename(columns={"y_true_reference": "y_true"})[
        ["seed", "id", "y_true", "y_pred_reference", "y_pred_other"]]


def mae_difference(y_true, y_pred_reference, y_pred_other, *, level: float = 0.95,
                   n_resamples: int = 9999, seed: int = 0,
                   clip: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """MAE(other) − MAE(reference) over paired samples, with a paired bootstrap interval;
    `clip`: (low, high) applied to labels and predictions first, where the dataset's MAE does.

    The difference of the two MAEs is the mean of the per-sample differences of absolute
    errors, so resampling those differences resamples the pairs. The percentile method, not
    scipy's default BCa: BCa's jackknife holds an n × n array, about 4 GB for five pooled seeds
    of MOSEI's test split. A fixed `seed` makes the interval reproducible."""
    # Positional arrays first: np.clip keeps a pandas Series (and its index labels).
    y_true, y_pred_reference, y_pred_other = (
        np.asarray(values, dtype=float) for values in (y_true, y_pred_reference, y_pred_other))
    if clip is not None:
        y_true, y_pred_reference, y_pred_other = (
            np.clip(values, *clip) for values in (y_true, y_pred_reference, y_pred_other))
    differences = np.abs(y_pred_other - y_true) - np.abs(y_pred_reference - y_true)
    if len(differences) < 2:
        return float("nan"), float("nan"), float("nan")
    if np.all(differences == differences[0]):  # every resample has the same mean
        return (float(differences[0]),) * 3
    result = stats.bootstrap((differences,), np.mean, confidence_level=level,
                             n_resamples=n_resamples, method="percentile", batch=1000,
                             rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return float(differences.mean()), float(interval.low), float(interval.high)


def best_rows(table: pd.DataFrame, metric: str) -> pd.Series:
    """Which rows hold the best `{metric}_mean` (lowest for MAE and Loss, else highest)."""
    means = table[f"{metric}_mean"]
    best = means.min() if metric in LOWER_IS_BETTER else means.max()
    return means == best
