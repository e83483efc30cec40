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


def demo_feature_file(dataset_name: str, aligned: bool) -> Path:
    """The synthetic feature pickle for `dataset_name`'s shapes, written once and reused."""
    preset = dataset_name if dataset_name in ("mosi", "mosei") else "mosi"
    layout = "aligned" if aligned else "unaligned"
    path = demo_dir() / f"{preset}-{layout}.pkl"
    if not path.is_file():
        write_dataset(path, preset=preset, aligned=aligned, seed=0, **DEMO_SIZES)
    return path
