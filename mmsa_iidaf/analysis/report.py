"""All four interpretability outputs of one checkpoint, and `report.md` beside them."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .checkpoint import LoadedRun, in_order
from .interpret import (collect, disentanglement_table, gates_figure, importance_table,
                        sentiment_classes, tsne_figure)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def analyse(run: LoadedRun, out: Path, command: str, source: str,
            tsne_samples: int = 1000) -> dict[str, Path]:
    """Write tsne.png, gates.png, importance.csv, disentanglement.csv and report.md in `out`.
    `command`: the command line to cite; `source`: where the run's config came from."""
    predicted = collect(run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("tsne.png", "gates.png", "importance.csv",
                                           "disentanglement.csv", "report.md")}
    drawn = tsne_figure(predicted, paths["tsne.png"], max_samples=tsne_samples)
    classes = sentiment_classes(predicted["labels"], run.args["train_mode"])
    gates_figure(predicted, classes, paths["gates.png"])
    importance = importance_table(predicted, run.args)
    importance.to_csv(paths["importance.csv"], index=False)
    diagnostics = run.trainer.diagnose(run.model, in_order(run.loaders["test"]))
    disentanglement = disentanglement_table(predicted, diagnostics)
    disentanglement.to_csv(paths["disentanglement.csv"], index=False)

    args = run.args
    name = args.get("run_name") or args["model_name"]
    metrics = [c for c in importance.columns
               if c not in ("prediction", "output") and not c.endswith("_drop")]
    shown = [m for m in ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Mult_acc_7", "Acc_2",
                         "F1_score") if m in metrics] or metrics
    summary = importance[["prediction", *shown, *(f"{m}_drop" for m in shown)]]
    warning = ("\n**Warning:** this feature file is not the one the checkpoint was trained on "
               f"(its sha256 differs from the run's {args.get('feature_sha256')}).\n"
               if run.other_features else "")
    text = f"""# Interpretability of `{name}`, seed {args['seed']}, on {args['dataset_name']}

All files below were written by

```
{command}
```

- checkpoint: `{run.checkpoint}`
- run config: {source}
- features: `{run.feature_file}`, test split, {len(predicted['labels'])} samples;
  modalities `{''.join(predicted['modalities'])}`
{warning}
## Files

- [tsne.png](tsne.png) — Fig. 4: t-SNE (scikit-learn, perplexity ≤ 30, PCA start, seed 0) of the
  shared r_m (circles) and specific u_m (crosses) features of each modality (colours), {drawn}
  test samples.
- [gates.png](gates.png) — Fig. 5: box plots of the fusion gate by sentiment class (a score's
  sign: negative < 0, neutral = 0, positive > 0; a classification label's class): γ weighs the
  shared branch g(s), 1 − γ the specific branch g(p). γ is one weight per sample (eq. 22), so
  "by modality" is read as the attention mask of each modality's IAMD (eq. 7–9): α (how much of
  V_r enters u) and β (how much of V_u enters r), each sample's mean over channels, by class
  (absent without IAMD).
- [importance.csv](importance.csv) — Table 8: the full prediction ŷ, shared-only g(s) and
  specific-only g(p) (the branches before the gate), every metric of each, and `{{metric}}_drop`
  = the relative loss of performance against the full model (positive = worse).
- [disentanglement.csv](disentanglement.csv) — HSIC(u_m, r_m) (0 = independent), scale-free CMD
  between modalities' shared features (0 = aligned), a linear probe's cross-validated accuracy at
  telling the modality from r and from u with the chance level (shared should be near chance,
  specific above it), and the cross-validated label R² that u adds to r (ridge on [u, r] minus
  ridge on r).

## Importance (Table 8)

{markdown_table(summary)}

## Disentanglement

{markdown_table(disentanglement[["measure", "modality", "value", "reference"]])}
"""
    paths["report.md"].write_text(text)
    return paths
