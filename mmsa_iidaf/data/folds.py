"""K folds of an MMSA feature pickle's train and valid splits, by video: model selection that
never reads the test split, on more clips than the valid split alone.

MOSI's valid split is 265 clips of 11 videos, and candidates whose mean validation loss over
three or six seeds lies within the seeds' noise cannot be ordered on it
(benchmarks/lite_selection.md). Fold k here holds out every clip of one k-th of the train and
valid videos: its `valid` split is those clips, its `train` split all the other train and valid
clips, and its `test` split a copy of its `valid` split, so that a run on a fold file (MMSA
always tests after training) computes nothing on the real test split. A video is never in two
splits of one fold, as in the official split (no speaker in two splits).

    python -m mmsa_iidaf.data.folds FILE OUT_DIR [--folds 5] [--seed 0]

writes OUT_DIR/fold0.pkl ... fold{K-1}.pkl, each read by `-f` like any MMSA feature file.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

from mmsa_iidaf.errors import UserError

SELECTION_SPLITS = ("train", "valid")


def video_of(clip_id: str) -> str:
    """MMSA's clip ids are VIDEO_CLIPNO; a video id may itself hold underscores. An id without
    one (UR-FUNNY's) is its own group."""
    return str(clip_id).rsplit("_", 1)[0]


def video_folds(videos, folds: int, seed: int) -> list[list[str]]:
    """The distinct `videos` in `folds` groups of near-equal count, shuffled by `seed`."""
    distinct = sorted(set(videos))
    if not 2 <= folds <= len(distinct):
        raise UserError(f"--folds {folds}: the train and valid splits hold {len(distinct)} "
                        f"videos; give between 2 and {len(distinct)} folds")
    order = np.random.default_rng(seed).permutation(len(distinct))
    return [sorted(distinct[i] for i in group) for group in np.array_split(order, folds)]


def _pooled(data: dict) -> dict:
    """The train and valid splits as one: each per-clip field concatenated, train first."""
    pooled = {}
    for key in data["train"]:
        if key not in data["valid"]:
            continue
        parts = [data[split][key] for split in SELECTION_SPLITS]
        pooled[key] = (np.concatenate(parts) if isinstance(parts[0], np.ndarray)
                       else [item for part in parts for item in part])
    return pooled


def _select(split: dict, rows: np.ndarray) -> dict:
    return {key: (value[rows] if isinstance(value, np.ndarray) else [value[i] for i in rows])
            for key, value in split.items()}


def fold_data(data: dict, held_out_videos) -> dict:
    """One fold: `valid` the clips of `held_out_videos`, `train` the other train and valid
    clips (every field both splits have, in the file's order), `test` the file's own."""
    pooled, held_out_videos = _pooled(data), set(held_out_videos)
    held_out = np.array([video_of(clip) in held_out_videos for clip in pooled["id"]])
    return {"train": _select(pooled, np.flatnonzero(~held_out)),
            "valid": _select(pooled, np.flatnonzero(held_out)), "test": data["test"]}


def read_feature_file(path: Path) -> dict:
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror}); give the path of an MMSA "
                        f"feature pickle") from None
    try:
        with handle:
            data = pickle.load(handle)
        for split in SELECTION_SPLITS:
            clips = len(data[split]["id"])
            for key, value in data[split].items():
                if hasattr(value, "__len__") and len(value) != clips:
                    raise ValueError(f"'{split}' field '{key}' has {len(value)} rows, "
                                     f"its ids {clips}")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, KeyError, TypeError,
            ValueError) as error:
        raise UserError(f"{path}: not an MMSA feature pickle with per-clip train and valid "
                        f"splits and their ids ({type(error).__name__}: {error}); give one such "
                        f"as MMSA's loader reads") from None
    return data


def write_folds(path, out_dir, folds: int = 5, seed: int = 0) -> list[dict]:
    """Write OUT_DIR/fold{k}.pkl for k < folds; return, per fold, its `path` and its `train`
    and `valid` clip counts and held-out `videos`."""
    data = read_feature_file(Path(path))
    groups = video_folds([video_of(clip) for split in SELECTION_SPLITS
                          for clip in data[split]["id"]], folds, seed)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{out}: cannot create the output folder ({error.strerror}); give a "
                        f"writable path") from None
    written = []
    for index, held_out in enumerate(groups):
        target, fold = out / f"fold{index}.pkl", fold_data(data, held_out)
        with open(target, "wb") as handle:
            pickle.dump(fold, handle, protocol=pickle.HIGHEST_PROTOCOL)
        written.append({"path": target, "train": len(fold["train"]["id"]),
                        "valid": len(fold["valid"]["id"]), "videos": len(held_out)})
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m mmsa_iidaf.data.folds",
        description="K folds by video of an MMSA feature file's train and valid splits.")
    parser.add_argument("feature_file", help="an MMSA feature pickle (train, valid, test)")
    parser.add_argument("out_dir", help="folder for fold0.pkl ... fold{K-1}.pkl")
    parser.add_argument("--folds", type=int, default=5, help="K (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="the videos' shuffle (default 0)")
    args = parser.parse_args(argv)
    try:
        written = write_folds(args.feature_file, args.out_dir, args.folds, args.seed)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for fold in written:
        print(f"{fold['path']}: train {fold['train']} clips, valid {fold['valid']} clips of "
              f"{fold['videos']} videos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
