"""Choose among configurations by their validation figures over K folds by video.

    python benchmarks/fold_selection.py ROOT --candidates a,b,c [--metric valid_Loss]

ROOT holds one folder per fold, `f0`, `f1`, ..., each with one results folder per candidate
(`ROOT/f{k}/{candidate}`, a run's `--res-save-dir` on `fold{k}.pkl` from
`python -m mmsa_iidaf.data.folds`). Each candidate's figure on a fold is the mean over its seeds
there (each seed's newest row of its seeds file); the table gives, per candidate, the mean and
standard deviation over folds, every fold's figure, and the mean paired difference to the best
candidate with a paired t-test over folds (`scipy.stats.ttest_rel`). The best is the lowest mean
for `Loss` and `MAE`, the highest for any other metric. Only `valid_` metrics are accepted: a
choice reads the validation split, never the test split.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsa_iidaf.errors import UserError  # noqa: E402
from mmsa_iidaf.experiments.statistics import LOWER_IS_BETTER, seed_summary  # noqa: E402


def fold_dirs(root: Path) -> list[Path]:
    """ROOT/f0, f1, ... in order; UserError unless they are consecutive from f0 (two or more)."""
    found = sorted((p for p in root.glob("f*") if p.is_dir() and p.name[1:].isdigit()),
                   key=lambda p: int(p.name[1:]))
    if len(found) < 2 or [int(p.name[1:]) for p in found] != list(range(len(found))):
        raise UserError(f"{root}: needs fold folders f0, f1, ... (two or more, consecutive), "
                        f"found {[p.name for p in found] or 'none'}; give the folder the fold "
                        f"runs' --res-save-dir folders are in")
    return found


def fold_figure(results_dir: Path, metric: str) -> float:
    """The mean of `metric` over the seeds of one results folder (each seed's newest row)."""
    tables = sorted(results_dir.glob("*-seeds.csv"))
    if len(tables) != 1:
        raise UserError(f"{results_dir}: expected one *-seeds.csv, found {len(tables)}; run the "
                        f"candidate on this fold with --res-save-dir {results_dir}")
    rows = pd.read_csv(tables[0])
    if metric not in rows:
        raise UserError(f"{tables[0]}: no column '{metric}'; give one of "
                        f"{', '.join(c for c in rows.columns if c.startswith('valid_'))}")
    return float(rows.groupby("seed").tail(1)[metric].mean())


def fold_table(root: Path, candidates: list[str], metric: str) -> dict[str, pd.DataFrame]:
    """Per candidate, a table of (seed = fold index, metric): the pairing unit is the fold."""
    folds = fold_dirs(root)
    return {name: pd.DataFrame({"seed": range(len(folds)),
                                metric: [fold_figure(fold / name, metric) for fold in folds]})
            for name in candidates}


def summary(tables: dict[str, pd.DataFrame], metric: str) -> tuple[str, pd.DataFrame]:
    """(the best candidate, one row per candidate: mean, std, per fold, difference to the best
    and its paired p over folds), the best first."""
    means = {name: table[metric].mean() for name, table in tables.items()}
    lower = metric.removeprefix("valid_") in LOWER_IS_BETTER
    best = (min if lower else max)(means, key=means.get)
    ordered = sorted(tables, key=means.get, reverse=not lower)
    stats = seed_summary({name: tables[name] for name in ordered}, [metric]).set_index("model")
    rows = []
    for name in ordered:
        difference = tables[name][metric] - tables[best][metric]
        rows.append({"candidate": name, "mean": stats.loc[name, f"{metric}_mean"],
                     "std": stats.loc[name, f"{metric}_std"],
                     "per_fold": list(tables[name][metric]),
                     "difference": difference.mean(), "p": stats.loc[name, f"{metric}_p"]})
    return best, pd.DataFrame(rows)


def markdown(best: str, table: pd.DataFrame, metric: str) -> str:
    lines = [f"| candidate | {metric}, mean ± std over folds | per fold | difference to "
             f"`{best}` | p (paired over folds) |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        name = f"**{row.candidate}** (chosen)" if row.candidate == best else row.candidate
        p = "—" if row.candidate == best else f"{row.p:.2f}"
        lines.append(f"| {name} | {row.mean:.4f} ± {row.std:.4f} | "
                     f"{' / '.join(f'{v:.4f}' for v in row.per_fold)} | "
                     f"{row.difference:+.4f} | {p} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the folder holding f0, f1, ...")
    parser.add_argument("--candidates", required=True,
                        help="comma-separated names of the candidates' results folders")
    parser.add_argument("--metric", default="valid_Loss",
                        help="a validation column of the seeds files (default valid_Loss)")
    options = parser.parse_args(argv)
    candidates = [name.strip() for name in options.candidates.split(",") if name.strip()]
    try:
        if not options.metric.startswith("valid_"):
            raise UserError(f"--metric {options.metric}: a choice reads the validation split; "
                            f"give a valid_ column such as valid_Loss")
        if len(candidates) < 2:
            raise UserError(f"--candidates {options.candidates!r}: give two or more names")
        best, table = summary(fold_table(options.root, candidates, options.metric),
                              options.metric)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(best, table, options.metric), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
