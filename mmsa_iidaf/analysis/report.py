"""The interpretability outputs of one checkpoint, and `report.md` beside them: all four for
IIDAF; t-SNE and the disentanglement numbers for a peer (no gate, no branch predictions)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .checkpoint import LoadedRun
from .interpret import (collect, disentanglement_table, gates_figure, has_gate,
                        importance_table, sentiment_classes, tsne_figure)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


GATE_FILES = """- [gates.png](gates.png) — Fig. 5: box plots of the fusion gate by sentiment class (a score's
  sign: negative < 0, neutral = 0, positive > 0; a classification label's class): γ weighs the
  shared branch g(s), 1 − γ the specific branch g(p). γ is one weight per sample (eq. 22), so
  "by modality" is read as the attention mask of each modality's IAMD (eq. 7–9): α (how much of
  V_r enters u) and β (how much of V_u enters r), each sample's mean over channels, by class
  (absent without IAMD).
- [importance.csv](importance.csv) — Table 8: the full prediction ŷ, shared-only g(s) and
  specific-only g(p) (the branches before the gate), every metric of each, and `{metric}_drop`
  = the relative loss of performance against the full model (positive = worse).
"""


def analyse(run: LoadedRun, out: Path, command: str, source: str,
            tsne_samples: int = 1000) -> dict[str, Path]:
    """Write tsne.png, disentanglement.csv, report.md and, for IIDAF, gates.png and
    importance.csv in `out`. `command`: the command line to cite; `source`: where the run's
    config came from."""
    predicted = collect(run)
    gated = has_gate(predicted)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["tsne.png", *(["gates.png", "importance.csv"] if gated else []),
             "disentanglement.csv", "report.md"]
    paths = {name: out / name for name in names}
    drawn = tsne_figure(predicted, paths["tsne.png"], max_samples=tsne_samples)
    args = run.args
    if gated:
        classes = sentiment_classes(predicted["labels"], args["train_mode"])
        gates_figure(predicted, classes, paths["gates.png"])
        importance = importance_table(predicted, args)
        importance.to_csv(paths["importance.csv"], index=False)
    disentanglement = disentanglement_table(predicted, int(args["batch_size"]))
    disentanglement.to_csv(paths["disentanglement.csv"], index=False)

    name = args.get("run_name") or args["model_name"]
    importance_section = ""
    if gated:
        metrics = [c for c in importance.columns
                   if c not in ("prediction", "output") and not c.endswith("_drop")]
        shown = [m for m in ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Mult_acc_7", "Acc_2",
                             "F1_score") if m in metrics] or metrics
        summary = importance[["prediction", *shown, *(f"{m}_drop" for m in shown)]]
        importance_section = f"## Importance (Table 8)\n\n{markdown_table(summary)}\n\n"
    warning = ("\n**Warning:** this feature file is not the one the checkpoint was trained on "
               f"(its sha256 differs from the run's {args.get('feature_sha256')}).\n"
               if run.other_features else "")
    not_drawn = ("" if gated else f"\n`{args['model_name']}` has no fusion gate γ and no "
                 "shared-only / specific-only predictions, so Fig. 5 and Table 8 do not "
                 "apply; the features below are its shared (r) and specific (u) ones, measured "
                 "as IIDAF's are.\n")
    text = f"""# Interpretability of `{name}`, seed {args['seed']}, on {args['dataset_name']}

All files below were written by

```
{command}
```

- checkpoint: `{run.checkpoint}`
- run config: {source}
- features: `{run.feature_file}`, test split, {len(predicted['labels'])} samples;
  modalities `{''.join(predicted['modalities'])}`
{warning}{not_drawn}
## Files

- [tsne.png](tsne.png) — Fig. 4: t-SNE (scikit-learn, perplexity ≤ 30, PCA start, seed 0) of the
  shared r_m (circles) and specific u_m (crosses) features of each modality (colours), {drawn}
  test samples.
{GATE_FILES if gated else ""}- [disentanglement.csv](disentanglement.csv) — HSIC(u_m, r_m) (0 = independent), scale-free CMD
  between modalities' shared features (0 = aligned), a linear probe's cross-validated accuracy at
  telling the modality from r and from u with the chance level (shared should be near chance,
  specific above it), and the cross-validated label R² that u adds to r (ridge on [u, r] minus
  ridge on r).

{importance_section}## Disentanglement

{markdown_table(disentanglement[["measure", "modality", "value", "reference"]])}
"""
    paths["report.md"].write_text(text)
    return paths
