"""Several models, or variants of one, trained side by side on one feature file: the table.

`compare(models, dataset, seeds, ...)` plans every (model, seed), checks everything it can before
training, skips what its seeds files already hold (same config fingerprint, same feature sha256),
trains the rest through an executor (`executors`: the ordinary `MMSA_run` here, one call per
model, or one Ray task per (model, seed); either way every seed's row and predictions are saved
as the seed finishes), and then reads the seeds files back into
`compare-{dataset}.csv` and `compare-{dataset}.md` in `res_save_dir`. The first model is the
reference of the p-values and of the MAE differences. With `robustness`, every finished
checkpoint is also scored on corrupted test inputs (`robustness.run_robustness`) and each
curve's area relative to the clean score joins the table.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import compat, registry, runs
from ..errors import FeatureFileError, UnknownNameError, UserError
from . import ablations, executors, statistics

# robustness.KINDS, named here so that a comparison without --robustness does not import
# robustness (and matplotlib with it).
ROBUSTNESS_KINDS = ("missing", "noise")


class RunsFailed(RuntimeError):
    """Runs of a comparison that failed for good; the table holds the others."""

    def __init__(self, failures: list[str], table_path: Path):
        self.failures = failures
        super().__init__(f"{len(failures)} run(s) failed (the table {table_path} has the others, "
                         f"and rerunning the command retries only these): "
                         + "; ".join(failures))


class ComparisonInterrupted(KeyboardInterrupt):
    """Ctrl-C during a comparison's grid, after the table of what finished was written."""

    def __init__(self, table_path: Path):
        self.table_path = table_path
        super().__init__(str(table_path))


@dataclass(frozen=True)
class Entry:
    """One row of the comparison: `name` (a model, or a variant like `iidaf[-mic]`), the model
    it trains, the `config=` it trains with, and what identifies its finished seeds."""
    name: str
    model: str
    config: dict
    fingerprint: str
    feature_file: Path
    feature_sha256: str


def plan_names(models: list[str], ablation: str | None) -> list[tuple[str, str, dict]]:
    """(name, model, overrides) per row. An ablation puts the ablated model's variants first,
    the full model leading, so that p-values are against it."""
    models = list(dict.fromkeys(model.lower() for model in models))
    rows = [(model, model, {}) for model in models]
    if ablation is None:
        return rows
    ablated = ablations.ablated_model(models, ablation)
    return ([(name, ablated, overrides)
             for name, overrides in ablations.variants(ablated, ablation).items()]
            + [row for row in rows if row[0] != ablated])


def plan(models, dataset, *, ablation=None, config_file=None, config=None, model_configs=None,
         res_save_dir, **feature_paths) -> list[Entry]:
    """Every row of the comparison, each checked as `MMSA_run` would check it, before any
    training; all on one feature file."""
    config_file = compat.normalize_config_file(config_file)
    for model in models:
        registry.check_names(model, dataset)
    entries, hashes = [], {}
    for name, model, overrides in plan_names(models, ablation):
        run_config = {**(config or {}), **(model_configs or {}).get(model, {}), **overrides}
        if name != model:
            run_config["run_name"] = name
        run_config = runs.run_config(model, dataset, run_config, res_save_dir)
        preview = runs.preview_config(model, dataset, config_file, run_config, **feature_paths)
        runs.check_before_training(model, preview)
        feature = runs.feature_files(preview)[0].resolve()
        if feature not in hashes:
            hashes[feature] = runs.file_sha256(feature)
        entries.append(Entry(name, model, run_config, runs.config_fingerprint(preview), feature,
                             hashes[feature]))
    if len(hashes) > 1:
        raise FeatureFileError(
            f"the models of this comparison read different feature files "
            f"({', '.join(map(str, hashes))}): compare them on one file with -f PATH"
        )
    return entries


def seeds_rows(entry: Entry, dataset: str, res_save_dir) -> pd.DataFrame:
    """The entry's seeds file; rows written before config fingerprints existed match none."""
    path = runs.seeds_csv(res_save_dir, entry.name, dataset)
    try:
        rows = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["seed"])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UserError(f"{path} cannot be read as a seeds file ({type(error).__name__}): move "
                        f"it away, or use another --res-save-dir") from None
    if "seed" not in rows:
        raise UserError(f"{path} has no 'seed' column, so it is no seeds file of this plugin: "
                        f"move it away, or use another --res-save-dir")
    for column in ("feature_sha256", "config_sha256"):
        if column not in rows:
            rows[column] = ""
    return rows


def check_feature_file_matches(entries: list[Entry], dataset: str, res_save_dir) -> None:
    """A comparison reads and rewrites its models' seeds files: rows made on another feature
    file would mix two data sets in one table."""
    for entry in entries:
        rows = seeds_rows(entry, dataset, res_save_dir)
        other = rows[rows["feature_sha256"] != entry.feature_sha256]
        if len(other):
            path = runs.seeds_csv(res_save_dir, entry.name, dataset)
            raise FeatureFileError(
                f"{path} has {len(other)} row(s) made on another feature file (sha256 "
                f"{str(other['feature_sha256'].iloc[0])[:12]}…, not {entry.feature_sha256[:12]}… "
                f"of {entry.feature_file}): use another --res-save-dir, or move that file away"
            )


def finished(entry: Entry, dataset: str, res_save_dir, seeds) -> pd.DataFrame:
    """The entry's rows of `seeds` made with its config and feature file: each seed's latest
    row, when that row is one of these. A later run of the same name with another config
    rewrote the seed's checkpoint, predictions and diagnostics, so an older matching row no
    longer describes them: that seed is trained again."""
    rows = seeds_rows(entry, dataset, res_save_dir)
    latest = rows[rows["seed"].isin(seeds)].drop_duplicates("seed", keep="last")
    same = ((latest["config_sha256"] == entry.fingerprint)
            & (latest["feature_sha256"] == entry.feature_sha256))
    return latest[same]


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool):
    """A bar over the (model, seed) grid; the executor calls `advance(name, seed)` as each
    seed's row is written."""
    bar = tqdm(total=total, desc="comparison", unit="run", disable=not enabled or total == 0)

    def advance(name: str, seed: int):
        bar.set_postfix_str(f"{name} seed {seed}")
        bar.update()

    try:
        yield advance
    finally:
        bar.close()


# Each trainer's own objective on the test split (MSE for IIDAF, L1 for most MMSA baselines):
# kept in the seeds rows, but not a metric two models can be ranked on.
NOT_COMPARED = ("Loss",)


def metric_names(rows: list[pd.DataFrame]) -> list[str]:
    """The metric columns of seeds rows (`record_seed` writes them between `seed` and `model`)
    that mean the same for every model."""
    names = []
    for table in rows:
        columns = list(table.columns)
        if "model" in columns:
            names += [c for c in columns[1:columns.index("model")]
                      if c not in names and c not in NOT_COMPARED]
    return names


def validation_metric_names(rows: list[pd.DataFrame]) -> list[str]:
    """The validation columns of seeds rows (`valid_` + metric, `record_seed` writes them after
    the run's identity), but for `Loss`, as with the test metrics. Rows written before they
    existed have none."""
    names = []
    for table in rows:
        names += [c for c in table.columns if c.startswith("valid_") and c not in names
                  and c[len("valid_"):] not in NOT_COMPARED]
    return names


def load_predictions(name: str, dataset: str, res_save_dir, seeds) -> pd.DataFrame:
    """seed, id, y_true, y_pred of every seed whose predictions file exists (one value per
    sample; a classifier's logits have no MAE and are left out)."""
    frames = []
    for seed in seeds:
        path = runs.predictions_path(res_save_dir, name, dataset, seed)
        if not path.is_file():
            continue
        with np.load(path) as data:
            if data["y_pred"].ndim != 1:
                continue
            frames.append(pd.DataFrame({"seed": seed, "id": data["id"], "y_true": data["y_true"],
                                        "y_pred": data["y_pred"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["seed", "id", "y_true", "y_pred"])


def text_input(rows: pd.DataFrame) -> str:
    """What a model read as text, from its seeds rows: a win must be the method's, not the
    input's, so the table names it."""
    if rows.empty:
        return ""
    row = rows.iloc[-1]
    encoder = str(row.get("text_encoder", "none"))
    if encoder in ("none", "nan", ""):
        return "precomputed `text`"
    config = json.loads(row["config"]) if isinstance(row.get("config"), str) else {}
    mode = "frozen" if runs.frozen_text_encoder(config) else "fine-tuned"
    return f"`text_bert` via {encoder.split(' (')[0]}, {mode}"


def build_table(entries: list[Entry], dataset: str, res_save_dir,
                seeds) -> tuple[pd.DataFrame, list[str]]:
    """(the comparison table, its metrics) from the seeds files and the predictions."""
    rows = {entry.name: finished(entry, dataset, res_save_dir, seeds) for entry in entries}
    metrics = metric_names(list(rows.values()))
    # The validation means are for choosing between the rows; the markdown reports the test's.
    table = statistics.seed_summary(rows, metrics + validation_metric_names(list(rows.values())))
    table.insert(2, "text_input", [text_input(rows[entry.name]) for entry in entries])
    if "MAE" in metrics:
        # Only the predictions of finished seeds: a file of a seed run with another config
        # (a row that no longer matches) would mix another model into the interval.
        def predictions(entry: Entry) -> pd.DataFrame:
            return load_predictions(entry.name, dataset, res_save_dir,
                                    rows[entry.name]["seed"].tolist())

        reference = predictions(entries[0])
        intervals = []
        for entry in entries:
            if entry is entries[0]:
                intervals.append((math.nan,) * 3)
                continue
            pairs = statistics.paired_samples(reference, predictions(entry))
            intervals.append(statistics.mae_difference(
                pairs["y_true"], pairs["y_pred_reference"], pairs["y_pred_other"],
                clip=registry.mae_clip(dataset)))
        table[["MAE_diff", "MAE_diff_low", "MAE_diff_high"]] = intervals
    return table, metrics


def add_robustness(table: pd.DataFrame, metrics: list[str], entries: list[Entry],
                   dataset: str, res_save_dir, seeds, kinds: list[str]
                   ) -> tuple[pd.DataFrame, list[str]]:
    """The table with, per model, the relative area under each robustness curve of `kinds`
    (MAE's where the dataset has it), and the checkpoints whose evaluation failed; writes
    `robustness-{dataset}.csv` and `.png`, checkpoint by checkpoint."""
    from .robustness import RobustnessFailed, robustness_summary, run_robustness

    rows = pd.concat([finished(e, dataset, res_save_dir, seeds) for e in entries],
                     ignore_index=True)
    executors.fetch_checkpoints(rows)
    curves, failures = [], []
    for kind in kinds:
        try:
            curves.append(run_robustness(rows, kind, res_save_dir))
        except RobustnessFailed as failed:
            curves.append(failed.table)
            failures.extend(failed.failures)
    curves = pd.concat(curves, ignore_index=True)
    if curves.empty:
        return table, failures
    summary = robustness_summary(curves, "MAE" if "MAE" in metrics else metrics[0])
    return table.merge(summary, on="model", how="left"), failures


def _value(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def markdown(table: pd.DataFrame, metrics: list[str], *, dataset: str, command: str,
             entry: Entry, seeds) -> str:
    """The table for a paper: mean ± std per metric, best in bold, † where p < 0.05."""
    reference = table["model"].iloc[0]
    lines = [
        f"# Comparison on {dataset}",
        "",
        f"Command: `{command}`",
        "",
        f"Feature file: `{entry.feature_file}`, sha256 `{entry.feature_sha256}`",
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over the seeds each model "
        f"finished; best per column in **bold** (lowest MAE, highest otherwise); † p < "
        f"0.05 in a paired t-test against `{reference}` over the seeds both finished, each "
        f"cell on its own (not corrected for the number of models and metrics).",
    ]
    has_diff = "MAE_diff" in table
    if has_diff:
        lines.append(f"ΔMAE: MAE minus `{reference}`'s over the test samples of all seeds, paired "
                     f"by (seed, id), with a paired bootstrap 95 % interval.")
    header = ["model", "seeds", "text input", *metrics] + (["ΔMAE [95 % CI]"] if has_diff
                                                            else [])
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {metric: statistics.best_rows(table, metric) for metric in metrics}
    undefined = False
    for index, row in table.iterrows():
        cells = [f"`{row['model']}`", str(row["n_seeds"]), row["text_input"]]
        for metric in metrics:
            cell = _value(row[f"{metric}_mean"], row[f"{metric}_std"])
            if best[metric][index]:
                cell = f"**{cell}**"
            if 0 < row[f"{metric}_n"] < row["n_seeds"]:
                cell += f" ({row[f'{metric}_n']}/{row['n_seeds']} seeds)"
                undefined = True
            if row[f"{metric}_p"] < 0.05:
                cell += " †"
            cells.append(cell)
        if has_diff:
            cells.append("—" if math.isnan(row["MAE_diff"]) else
                         f"{row['MAE_diff']:+.4f} [{row['MAE_diff_low']:+.4f}, "
                         f"{row['MAE_diff_high']:+.4f}]")
        lines.append("| " + " | ".join(cells) + " |")
    if undefined:
        lines += ["", "(k/n seeds): the metric is defined on k of the n seeds only (Pearson's r "
                  "is undefined when a model predicts one constant); mean and std are over those."]
    areas = [c[:-len("_mean")] for c in table.columns if "_rauc_" in c and c.endswith("_mean")]
    if areas:
        lines += ["", "Robustness: area under each curve of the metric against the corruption "
                  "level, relative to the clean score (1 = unaffected; `robustness-"
                  f"{dataset}.csv` has the curves), mean ± std over seeds; (k/n seeds): "
                  "scored on k of the model's n seeds only (a seed without its checkpoint is "
                  "skipped).", "",
                  "| model | " + " | ".join(areas) + " |", "|" + "---|" * (len(areas) + 1)]

        def area_cell(row, area: str) -> str:
            cell = _value(row[f"{area}_mean"], row[f"{area}_std"])
            scored = row.get(f"{area}_n")
            if pd.notna(scored) and int(scored) < row["n_seeds"]:
                cell += f" ({int(scored)}/{row['n_seeds']} seeds)"
            return cell

        for _, row in table.iterrows():
            lines.append(f"| `{row['model']}` | " + " | ".join(
                area_cell(row, a) for a in areas) + " |")
    return "\n".join(lines) + "\n"


def _write(path: Path, write) -> None:
    """Write through a partial file, so that an interruption leaves the old file whole."""
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def compare(models, dataset: str, seeds=(), *, ablation: str | None = None,
            config_file=None, config: dict | None = None,
            model_configs: dict[str, dict] | None = None, custom_feature=None,
            feature_T=None, feature_A=None, feature_V=None, gpu_ids=None,
            num_workers: int = 0, verbose_level: int = 1,
            model_save_dir=runs.DEFAULT_HOME / "saved_models",
            res_save_dir=runs.DEFAULT_HOME / "results", log_dir=runs.DEFAULT_HOME / "logs",
            robustness: list[str] | None = None, command: str | None = None,
            progress: bool = True, executor=None) -> pd.DataFrame:
    """Train every (model, seed) on one feature file and return the comparison table.

    `models`: MMSA model names, the first the reference; `ablation`: "modules", "losses" or
    "modalities" adds the variants of the first of `models` that has them (`iidaf[-mic]`,
    `fdrl[coarse]`, ...), the full model first; `config`:
    overrides for every model, `model_configs`: {model: overrides} on top. Other arguments are
    MMSA_run's. `robustness`: kinds of corruption ("missing", "noise") to score every finished
    checkpoint under after training. `executor`: where the runs train (`executors.LocalExecutor()`,
    the default, or `executors.RayExecutor(...)`). Seeds already in the seeds files with the same config and feature file are
    not trained again. Writes `compare-{dataset}.csv` (the returned table) and `.md` in
    `res_save_dir`. Raises a `UserError` before any training for bad names, files or configs,
    and `RunsFailed`, after writing the table of the runs that finished, if some run failed;
    a KeyboardInterrupt during the grid becomes `ComparisonInterrupted` once the table of what
    finished is written."""
    dataset = dataset.lower()
    seeds = list(dict.fromkeys(seeds)) or list(registry.DEFAULT_SEEDS)
    robustness = list(robustness or [])
    for kind in robustness:
        if kind not in ROBUSTNESS_KINDS:
            raise UnknownNameError(f"unknown robustness kind '{kind}': choose one of "
                                   f"{', '.join(ROBUSTNESS_KINDS)}")
    feature_paths = {"custom_feature": custom_feature, "feature_T": feature_T,
                     "feature_A": feature_A, "feature_V": feature_V}
    entries = plan(list(models), dataset, ablation=ablation, config_file=config_file,
                   config=config, model_configs=model_configs, res_save_dir=res_save_dir,
                   **feature_paths)
    check_feature_file_matches(entries, dataset, res_save_dir)

    pending = {entry.name: [s for s in seeds if s not in
                            set(finished(entry, dataset, res_save_dir, seeds)["seed"])]
               for entry in entries}
    total = len(entries) * len(seeds)
    skipped = total - sum(map(len, pending.values()))
    if skipped:
        print(f"comparison: {skipped} of {total} (model, seed) runs already in {res_save_dir} "
              f"with the same config and feature file: skipped")
    grid = executors.Grid(dataset, config_file, feature_paths, gpu_ids, num_workers,
                          verbose_level, Path(model_save_dir), Path(res_save_dir), Path(log_dir))
    if command is None:
        command = (f"mmsa_iidaf.compare({list(models)!r}, {dataset!r}, seeds={seeds!r}"
                   + (f", ablation={ablation!r}" if ablation else "") + ")")
    try:
        with progress_bar(total - skipped, progress) as advance:
            outcome = (executor or executors.LocalExecutor()).run(
                [(entry, pending[entry.name]) for entry in entries if pending[entry.name]],
                grid, advance)
    except KeyboardInterrupt:
        # Stopping a long grid still leaves the table of what finished (each model's n_seeds
        # says how far it got); the same command resumes the rest.
        write_tables(entries, dataset, res_save_dir, seeds, command)
        raise ComparisonInterrupted(Path(res_save_dir) / f"compare-{dataset}.md") from None
    table, robustness_failures = write_tables(entries, dataset, res_save_dir, seeds, command,
                                              robustness)
    if outcome.failures or robustness_failures:
        raise RunsFailed(outcome.failures + robustness_failures,
                         Path(res_save_dir) / f"compare-{dataset}.md")
    return table


def write_tables(entries: list[Entry], dataset: str, res_save_dir, seeds, command: str,
                 robustness: list[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """`compare-{dataset}.csv` and `.md` from the finished seeds rows (with the robustness
    areas of `robustness`'s kinds); returns the table and the failed robustness evaluations."""
    table, metrics = build_table(entries, dataset, res_save_dir, seeds)
    failures = []
    if robustness:
        table, failures = add_robustness(table, metrics, entries, dataset, res_save_dir, seeds,
                                         robustness)
    res_dir = Path(res_save_dir)
    res_dir.mkdir(parents=True, exist_ok=True)
    _write(res_dir / f"compare-{dataset}.csv", lambda path: table.to_csv(path, index=False))
    text = markdown(table, metrics, dataset=dataset, command=command, entry=entries[0],
                    seeds=seeds)
    _write(res_dir / f"compare-{dataset}.md", lambda path: path.write_text(text))
    return table, failures
