"""Robustness to missing and noisy modalities: every finished checkpoint on a corrupted test split.

For each modality the run uses, in turn, and for all of them at once ('all'), at each level:
- `missing`: each real time step is dropped with probability `level`, as MMSA's missing-data
  setting does (`MMDataset.generate_m`: a step is kept where a uniform draw is ≥ the rate; its
  features are zeroed; the lengths stay). Real steps are those within `*_lengths` (unaligned
  data), else the steps that are not all zero (MMSA's pickles pad with zeros). At sequence
  length 1 (clip features) this zeroes the whole clip vector with probability `level`. BERT
  token ids (`text_bert`) lose tokens instead: id 0 ([PAD]) and attention mask 0, [CLS] and the
  last real token ([SEP]) kept, as MMSA keeps them (MMSA writes [UNK] and keeps the mask; a
  masked token is the stronger form of absence).
- `noise`: Gaussian noise of standard deviation `level` × the feature's standard deviation on
  the train split (per feature, over real steps) is added to every real step. Token ids have no
  scale: with `text_bert`, noise corrupts the float modalities only (no 't' setting; 'all'
  corrupts audio and vision), and the `corrupted` column says what was corrupted.

Corruption is drawn per test sample from (corruption_seed, kind, modality, level, sample index),
so every model (whatever its batch size or loader order) sees the same corrupted inputs, and
'all' is exactly the union of the single-modality corruptions at that level. Models that read
time-averaged audio and vision (MMSA's `need_normalized`: TFN, LMF, MFN, LF_DNN, ...) get the
same corrupted sequences, averaged afterwards as MMSA's dataset averages them. Batches are
corrupted on the fly by a loader wrapper; each model's own trainer (`do_test`) scores them, so
any MMSA model works with its own calling convention. The pickles are never rewritten.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from easydict import EasyDict

from mmsa_iidaf import registry
from mmsa_iidaf.analysis.checkpoint import (LoadedRun, in_order, load_run, recorded_sha256,
                                            row_checkpoint)
from mmsa_iidaf.runs import uses_bert

logger = logging.getLogger("MMSA")

KINDS = ("missing", "noise")
LEVELS = tuple(round(0.1 * i, 1) for i in range(10))
KEYS = {"t": "text", "a": "audio", "v": "vision"}
LENGTH_KEYS = {"a": "audio_lengths", "v": "vision_lengths"}
# Summed into the seed of each sample's corruption: the kind and the modality by their index.
MODALITY_CODES = {"t": 0, "a": 1, "v": 2}
LEVEL_LABELS = {"missing": "fraction of time steps missing",
                "noise": "noise std / feature's train std"}
MARKERS = "osD^v<>ph*"


def real_steps(values: torch.Tensor, lengths=None) -> torch.Tensor:
    """(B, L) bool of the steps that hold data: within `lengths` (B,) where given, else the steps
    of `values` (B, L, D) that are not all zero."""
    if lengths is not None:
        positions = torch.arange(values.shape[1]).unsqueeze(0)
        return positions < torch.as_tensor(lengths).reshape(-1, 1)
    return values.ne(0).any(dim=-1)


def train_std(dataset, modality: str, chunk: int = 1024) -> np.ndarray:
    """Per-feature standard deviation over the real steps of a (train) dataset's modality,
    accumulated in chunks of samples (MOSEI's arrays are large)."""
    values = getattr(dataset, KEYS[modality])
    # Aligned data has no lengths: then `real_steps` reads the padding from the zeros.
    lengths = getattr(dataset, LENGTH_KEYS[modality], None) if modality in LENGTH_KEYS else None
    count, total, squares = 0, 0.0, 0.0
    for start in range(0, len(values), chunk):
        block = torch.from_numpy(np.asarray(values[start:start + chunk], dtype=np.float64))
        part = None if lengths is None else np.asarray(lengths[start:start + chunk])
        kept = block[real_steps(block, part)]
        count += kept.shape[0]
        total = total + kept.sum(dim=0)
        squares = squares + kept.pow(2).sum(dim=0)
    if count < 2:
        return np.zeros(values.shape[-1])
    mean = total / count
    variance = (squares / count - mean.pow(2)).clamp_min(0) * count / (count - 1)
    return variance.sqrt().numpy()


class Corruption:
    """One corruption setting: `kind` at `level` on the letters of `modalities`.
    `std`: per-feature train std of each float modality (noise only); `tokens`: whether text
    is BERT token ids (B, 3, L)."""

    def __init__(self, kind: str, level: float, modalities: str, seed: int,
                 std: dict[str, np.ndarray] | None = None, tokens: bool = False):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind, self.level, self.seed = kind, float(level), int(seed)
        self.tokens, self.std = tokens, std or {}
        self.modalities = modalities

    def _rng(self, modality: str, sample: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, KINDS.index(self.kind), MODALITY_CODES[modality],
                                      round(self.level * 1000), int(sample)])

    def _draws(self, modality: str, indices, shape: tuple) -> torch.Tensor:
        """One draw per sample of `indices` from its own generator: uniform (missing) or
        standard normal (noise), of `shape` per sample."""
        draw = "random" if self.kind == "missing" else "standard_normal"
        return torch.from_numpy(np.stack([getattr(self._rng(modality, i), draw)(shape)
                                          for i in indices])).float()

    def __call__(self, batch: dict) -> dict:
        """A copy of an MMSA batch with the corruption applied (needs the batch's `index`)."""
        batch = dict(batch)
        indices = torch.as_tensor(batch["index"]).tolist()
        for m in self.modalities:
            key = KEYS[m]
            if m == "t" and self.tokens:
                batch[key] = self._drop_tokens(batch[key], indices)
                continue
            values = batch[key]
            real = real_steps(values, batch.get(LENGTH_KEYS[m]) if m in LENGTH_KEYS else None)
            if self.kind == "missing":
                dropped = (self._draws(m, indices, values.shape[1:2]) < self.level) & real
                batch[key] = values.masked_fill(dropped.unsqueeze(-1), 0.0)
            else:
                scale = torch.as_tensor(self.std[m], dtype=values.dtype) * self.level
                noise = self._draws(m, indices, tuple(values.shape[1:])) * scale
                batch[key] = values + noise * real.unsqueeze(-1).to(values.dtype)
        return batch

    def _drop_tokens(self, text: torch.Tensor, indices) -> torch.Tensor:
        """`text_bert` (B, 3, L): ids, attention mask, segment ids."""
        ids, mask = text[:, 0], text[:, 1]
        real = mask > 0
        last = real.sum(dim=1, keepdim=True) - 1
        positions = torch.arange(text.shape[2]).unsqueeze(0)
        structural = (positions == 0) | (positions == last)
        dropped = (self._draws("t", indices, (text.shape[2],)) < self.level) & real & ~structural
        text = text.clone()
        text[:, 0] = ids.masked_fill(dropped, 0.0)
        text[:, 1] = mask.masked_fill(dropped, 0.0)
        return text


def average_over_time(batch: dict) -> dict:
    """MMSA's `need_normalized` on one batch (`MMDataset.__normalize`, the same numpy steps):
    audio and vision become their mean over all time steps (padding included), NaN set to 0."""
    batch = dict(batch)
    for key in ("audio", "vision"):
        steps_first = np.transpose(batch[key].numpy(), (1, 0, 2))
        mean = np.mean(steps_first, axis=0, keepdims=True)
        mean[mean != mean] = 0
        batch[key] = torch.from_numpy(np.ascontiguousarray(np.transpose(mean, (1, 0, 2))))
    return batch


class CorruptedLoader:
    """A loader whose batches pass through `corruption` (then, for a model that reads
    time-averaged audio and vision, through `average_over_time`): what MMSA's trainers iterate
    (they also ask its length)."""

    def __init__(self, loader, corruption: Corruption, average: bool = False):
        self.loader, self.corruption, self.average = loader, corruption, average
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            batch = self.corruption(batch)
            yield average_over_time(batch) if self.average else batch


def sequence_loaders(run: LoadedRun) -> dict:
    """The run's loaders; for a model that reads time-averaged audio and vision, loaders of the
    same file without the averaging, so that time steps can go missing before it."""
    if not run.args.get("need_normalized"):
        return run.loaders
    args = EasyDict(copy.deepcopy(dict(run.args)))
    args["need_normalized"] = False
    return registry.build_dataloaders(args, 0)


def settings_for(modalities: str, kind: str, tokens: bool) -> list[tuple[str, str]]:
    """(setting name, letters corrupted): each corruptible modality, then 'all'."""
    corruptible = "".join(m for m in modalities if not (kind == "noise" and m == "t" and tokens))
    return [(m, m) for m in corruptible] + ([("all", corruptible)] if corruptible else [])


def _label(row) -> str:
    name = row.get("name")
    return name if isinstance(name, str) and name else row["model"]


class RobustnessFailed(RuntimeError):
    """Checkpoints whose robustness evaluation raised; the rows of the others are written to
    `paths` and are `table`."""

    def __init__(self, failures: list[str], paths: list[Path], table: pd.DataFrame):
        self.failures, self.paths, self.table = failures, paths, table
        super().__init__("; ".join(failures))


def evaluate_row(row, kind: str, levels: Iterable[float], corruption_seed: int) -> list[dict]:
    """Every (setting, level) of one seeds row's checkpoint on its test split."""
    config = json.loads(row["config"])
    run = load_run(config, row_checkpoint(row), expected_sha256=recorded_sha256(row))
    tokens = uses_bert(run.args)
    modalities = run.args.get("modalities", "tav")
    average = bool(run.args.get("need_normalized"))
    loaders = sequence_loaders(run)
    std = {}
    if kind == "noise":
        train = loaders["train"].dataset
        std = {m: train_std(train, m) for m in modalities if not (m == "t" and tokens)}
    test = in_order(loaders["test"])
    records = []
    for setting, letters in settings_for(modalities, kind, tokens):
        for level in levels:
            corruption = Corruption(kind, level, letters, corruption_seed, std, tokens)
            with torch.no_grad():
                scores = run.trainer.do_test(
                    run.model, CorruptedLoader(test, corruption, average), mode="TEST")
            records.append({"model": _label(row), "seed": int(row["seed"]),
                            "dataset": config["dataset_name"], "modality": setting,
                            "kind": kind, "level": float(level), "corrupted": letters,
                            "corruption_seed": corruption_seed,
                            "run_finished_at": row.get("finished_at"),
                            **{k: float(v) for k, v in scores.items()}})
    return records


def _scored_before(earlier: pd.DataFrame, row, kind: str, levels: list[float],
                   corruption_seed: int) -> pd.DataFrame | None:
    """The rows of `earlier` that already score this checkpoint (the same run, by its finish
    time) under `kind` at exactly `levels` with `corruption_seed`; None when there are none."""
    if earlier.empty or "run_finished_at" not in earlier:
        return None
    part = earlier[(earlier["model"] == _label(row)) & (earlier["seed"] == int(row["seed"]))
                   & (earlier["kind"] == kind)]
    if (part.empty or set(part["run_finished_at"].astype(str)) != {str(row.get("finished_at"))}
            or set(part["corruption_seed"]) != {corruption_seed}
            or sorted(set(part["level"].round(6))) != sorted(round(x, 6) for x in levels)):
        return None
    return part


def _save(records: list[dict], path: Path) -> None:
    """Merge one checkpoint's rows into `path`: earlier rows of the same model, seed and kind
    replaced, others kept."""
    part = pd.DataFrame(records)
    if path.is_file():
        earlier = pd.read_csv(path)
        replaced = earlier.set_index(["model", "seed", "kind"]).index.isin(
            part.set_index(["model", "seed", "kind"]).index)
        part = pd.concat([earlier[~replaced], part], ignore_index=True)
    part.to_csv(path, index=False)


def run_robustness(rows, kind: str, res_dir, levels: Iterable[float] = LEVELS,
                   corruption_seed: int = 0) -> pd.DataFrame:
    """Evaluate the checkpoint of every seeds row (a DataFrame of rows, or dicts) under `kind`
    ('missing' or 'noise') at `levels`; rows whose checkpoint file is gone are skipped with a
    warning. Each checkpoint's rows go into `robustness-{dataset}.csv` in `res_dir` as soon as it
    is scored (earlier rows of the same model, seed and kind replaced, others kept), so an
    interrupted or failing call keeps what it scored, and a checkpoint already scored there (the
    same run, kind, levels and corruption seed) is read back, not scored again: the same call
    resumes. Then the figure `robustness-{dataset}.png`. Returns this call's rows: model, seed,
    dataset, modality, kind, level, corrupted, corruption_seed, run_finished_at and every metric
    of the model's trainer. Raises `RobustnessFailed`, after writing, when some checkpoint's
    evaluation raised."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    levels = [float(level) for level in levels]
    rows = [row for _, row in rows.iterrows()] if isinstance(rows, pd.DataFrame) else list(rows)
    res_dir = Path(res_dir)
    parts, failures, paths = [], [], set()
    for row in rows:
        checkpoint = row_checkpoint(row)
        if not checkpoint.is_file():
            logger.warning(f"robustness: no checkpoint {checkpoint} for {_label(row)} seed "
                           f"{row['seed']}; skipped")
            continue
        path = res_dir / f"robustness-{row['dataset']}.csv"
        earlier = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        scored = _scored_before(earlier, row, kind, levels, corruption_seed)
        if scored is not None:
            logger.info(f"robustness: {_label(row)} seed {row['seed']} ({kind}) already in "
                        f"{path}; kept")
            parts.append(scored)
            paths.add(path)
            continue
        try:
            records = evaluate_row(row, kind, levels, corruption_seed)
        except Exception as error:  # noqa: BLE001 - one checkpoint's failure ends only its own
            # The traceback to the log file; the user gets one line per failure at the end.
            logger.debug(f"robustness: {_label(row)} seed {row['seed']} failed", exc_info=True)
            failures.append(f"robustness ({kind}) of {_label(row)} seed {row['seed']}: "
                            f"{type(error).__name__}: {error}")
            continue
        res_dir.mkdir(parents=True, exist_ok=True)
        _save(records, path)
        parts.append(pd.DataFrame(records))
        paths.add(path)
    for path in sorted(paths):
        robustness_figure(pd.read_csv(path), path.with_suffix(".png"))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if failures:
        raise RobustnessFailed(failures, sorted(paths), table)
    return table


def _metric_for(table: pd.DataFrame) -> str:
    return "MAE" if "MAE" in table else next(
        c for c in table.columns if c not in ("model", "seed", "dataset", "modality", "kind",
                                              "level", "corrupted", "corruption_seed",
                                              "run_finished_at", "Loss"))


def robustness_figure(table: pd.DataFrame, path, metric: str | None = None) -> None:
    """`metric` (MAE where the dataset has it) against the corruption level: one panel per kind
    and modality setting, one line per model, mean ± std over seeds as a band."""
    metric = metric or _metric_for(table)
    kinds = [k for k in KINDS if k in set(table["kind"])]
    settings = [s for s in ("t", "a", "v", "all") if s in set(table["modality"])]
    # One colour and marker per model in every panel, and one legend beside the panels: a
    # comparison of ten models otherwise repeats a legend that hides the curves.
    models = list(dict.fromkeys(table["model"]))
    palette = colormaps["tab10" if len(models) <= 10 else "tab20"]
    styles = {model: {"color": palette(i % palette.N), "marker": MARKERS[i % len(MARKERS)]}
              for i, model in enumerate(models)}
    figure = Figure(figsize=(4 * len(settings) + 1.6, 3.4 * len(kinds)), layout="constrained")
    axes = figure.subplots(len(kinds), len(settings), squeeze=False)
    for row_axes, kind in zip(axes, kinds):
        for axis, setting in zip(row_axes, settings):
            part = table[(table["kind"] == kind) & (table["modality"] == setting)]
            for model, lines in part.groupby("model", sort=False):
                curve = lines.groupby("level")[metric].agg(["mean", "std"]).fillna(0.0)
                axis.plot(curve.index, curve["mean"], markersize=3, label=model, **styles[model])
                axis.fill_between(curve.index, curve["mean"] - curve["std"],
                                  curve["mean"] + curve["std"], alpha=0.15,
                                  color=styles[model]["color"])
            name = {"all": "all modalities"}.get(setting, {"t": "text", "a": "audio",
                                                            "v": "vision"}.get(setting))
            axis.set_title(f"{kind}: {name}")
            axis.set_xlabel(LEVEL_LABELS[kind])
            axis.set_ylabel(metric)
    handles = [Line2D([], [], markersize=4, label=model, **styles[model]) for model in models]
    figure.legend(handles=handles, loc="outside right center", fontsize=8, title="model")
    dataset = ", ".join(sorted(set(table["dataset"])))
    figure.suptitle(f"Robustness on {dataset} test split: {metric}, mean ± std over seeds")
    figure.savefig(path, dpi=120)


def robustness_summary(table: pd.DataFrame, metric: str = "MAE") -> pd.DataFrame:
    """Per model, the area under each robustness curve relative to the clean score: for each
    seed, kind and modality setting, the trapezoid integral of metric(level) / metric(level 0)
    over the levels, divided by the level range — 1 = unaffected; above 1 is worse for MAE,
    below 1 worse for accuracies and correlation. One row per model, columns
    `{metric}_rauc_{kind}_{setting}_mean`, `_std` and `_n` (over the seeds with a defined area:
    a seed without a checkpoint, or with a clean score of 0, has none)."""
    areas = []
    for (model, seed, kind, setting), curve in table.groupby(
            ["model", "seed", "kind", "modality"], sort=False):
        curve = curve.sort_values("level")
        levels, scores = curve["level"].to_numpy(), curve[metric].to_numpy(dtype=float)
        clean = scores[levels == 0]
        if not len(clean) or clean[0] == 0 or levels[-1] == levels[0]:
            area = math.nan
        else:
            area = np.trapezoid(scores / clean[0], levels) / (levels[-1] - levels[0])
        areas.append({"model": model, "column": f"{metric}_rauc_{kind}_{setting}",
                      "area": area})
    areas = pd.DataFrame(areas)
    grouped = areas.groupby(["model", "column"], sort=False)["area"].agg(["mean", "std", "count"])
    wide = grouped.rename(columns={"count": "n"}).unstack("column")
    wide.columns = [f"{column}_{stat}" for stat, column in wide.columns]
    ordered = [f"{column}_{stat}" for column in areas["column"].unique()
               for stat in ("mean", "std", "n")]
    return wide[ordered].reset_index()
