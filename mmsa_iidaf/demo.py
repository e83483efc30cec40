"""The embedded default: synthetic data in MMSA's layout, so that a run needs no download."""
from __future__ import annotations

import os
from pathlib import Path

from .data.synthetic import write_dataset

# Small enough for a CPU run of a few minutes, large enough to show a learning curve. Shapes are
# the preset's compact ones (official widths would only slow the demo down).
DEMO_SIZES = {"n_train": 512, "n_valid": 128, "n_test": 128}


def demo_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "mmsa_iidaf" / "demo"


def _as_sims(data: dict) -> None:
    """SIMS' labels: in [-1, 1], with the per-modality labels MMSA's multi-task models train on
    (the demo's are the clip's label)."""
    for split in data.values():
        split["regression_labels"] = split["regression_labels"] / 3.0
        for modality in "TAV":
            split[f"regression_labels_{modality}"] = split["regression_labels"].copy()


def _as_ur_funny(data: dict) -> None:
    """UR-FUNNY's labels: humour (1) or not (0), here the sign of the synthetic score."""
    for split in data.values():
        split["regression_labels"] = (split["regression_labels"] > 0).astype("float32")


# Datasets without shapes of their own: MOSI's clips, relabelled as the dataset's labels read.
RELABEL = {"sims": _as_sims, "ur_funny": _as_ur_funny}


def demo_feature_file(dataset_name: str, aligned: bool) -> Path:
    """The synthetic feature pickle for `dataset_name`'s shapes and labels, written once and
    reused."""
    preset = dataset_name if dataset_name in ("mosi", "mosei") else "mosi"
    relabel = RELABEL.get(dataset_name)
    layout = "aligned" if aligned else "unaligned"
    path = demo_dir() / f"{dataset_name if relabel else preset}-{layout}.pkl"
    if not path.is_file():
        write_dataset(path, preset=preset, aligned=aligned, seed=0, relabel=relabel,
                      **DEMO_SIZES)
    return path
