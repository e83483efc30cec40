"""A finished seed, back from disk: its config (from its seeds row or a JSON file), its data, its
model with the checkpoint's weights, and its trainer, as `MMSA_run` built them.

Both the interpretability analysis and the robustness evaluation start here.
"""
from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from easydict import EasyDict
from torch.utils.data import DataLoader

from mmsa_iidaf import registry
from mmsa_iidaf.errors import ConfigError, UserError
from mmsa_iidaf.runs import check_feature_files, file_sha256

# `{name}-{dataset}-seed{seed}.pth`, name being the model or an ablation's run name (which may
# itself contain '-', as in `iidaf[-mic]`): the dataset is the last part without one.
CHECKPOINT_NAME = re.compile(r"^(?P<name>.+)-(?P<dataset>[^-]+)-seed(?P<seed>-?\d+)\.pth$")


class CheckpointMismatch(UserError):
    """A checkpoint whose weights do not fit the model its config builds."""


def row_checkpoint(row) -> Path:
    """The checkpoint a seeds row was written with: its `checkpoint` column, or the
    `model_save_path` of its config (`{model_save_dir}/{name}-{dataset}-seed{seed}.pth`)."""
    recorded = row.get("checkpoint")
    if isinstance(recorded, str) and recorded:
        return Path(recorded)
    return Path(json.loads(row["config"])["model_save_path"])


def _same_file(a: Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def find_seed_row(checkpoint: Path, seeds_csv: Path | None = None,
                  res_save_dir: Path | None = None) -> pd.Series:
    """The seeds row of the run that wrote `checkpoint`: the row whose checkpoint is this file,
    else (a checkpoint moved since) the row whose name, dataset and seed its file name gives.
    Looked for in `seeds_csv`, or in every `*-seeds.csv` of `res_save_dir`; the newest row wins
    (rows are appended as seeds finish)."""
    files = [Path(seeds_csv)] if seeds_csv else sorted(Path(res_save_dir).glob("*-seeds.csv"))
    where = seeds_csv or f"{res_save_dir}/*-seeds.csv"
    if seeds_csv and not Path(seeds_csv).is_file():
        raise ConfigError(f"seeds file not found: {seeds_csv}: pass the run's "
                          f"{{model}}-{{dataset}}-seeds.csv")
    rows = pd.concat([pd.read_csv(path) for path in files], ignore_index=True) if files else None
    if rows is not None and len(rows):
        by_path = rows[[_same_file(row_checkpoint(row), checkpoint) for _, row in rows.iterrows()]]
        if len(by_path):
            return by_path.iloc[-1]
        parts = CHECKPOINT_NAME.match(Path(checkpoint).name)
        if parts:
            names = rows["name"] if "name" in rows else rows["model"]
            by_name = rows[(names == parts["name"]) & (rows["dataset"] == parts["dataset"])
                           & (rows["seed"] == int(parts["seed"]))]
            if len(by_name):
                return by_name.iloc[-1]
    raise ConfigError(
        f"no seeds row for checkpoint {checkpoint} in {where}: pass --res-save-dir of the run, "
        f"--seeds-csv FILE, or the run's config with --config-json FILE"
    )


def read_config_json(path: Path) -> dict:
    """A run's config as JSON (the `config` column of its seeds row)."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read as JSON ({error}): pass the "
                          f"`config` column of the run's seeds row") from None
    missing = [key for key in ("model_name", "dataset_name") if key not in config]
    if missing:
        raise ConfigError(f"config file {path} has no {', '.join(missing)}: pass the `config` "
                          f"column of the run's seeds row")
    return config


@dataclass
class LoadedRun:
    args: EasyDict
    model: torch.nn.Module  # MMSA's AMIO wrapper, in eval mode, with the checkpoint's weights
    trainer: object  # the model's MMSA trainer (do_test; iidaf's also predict and diagnose)
    loaders: dict  # MMSA's train / valid / test loaders
    checkpoint: Path
    feature_file: Path
    # Whether the feature file is not the one the checkpoint was trained on (by sha256).
    other_features: bool


def _device(config: dict) -> torch.device:
    """The run's device where this machine has it, else the CPU."""
    wanted = str(config.get("device", "cpu"))
    if wanted.startswith("cuda") and torch.cuda.is_available():
        return torch.device(wanted)
    return torch.device("cpu")


def recorded_sha256(row) -> str | None:
    """The checkpoint fingerprint a seeds row recorded; None for rows written before the
    `checkpoint_sha256` column, which cannot be checked."""
    value = row.get("checkpoint_sha256")
    return value if isinstance(value, str) and value else None


def load_run(config: dict, checkpoint: Path, feature_file: Path | None = None,
             expected_sha256: str | None = None) -> LoadedRun:
    """Build the run's loaders, model and trainer from `config` (a seeds row's config) and load
    `checkpoint` into the model. `feature_file`: the data to read (default: the run's own).
    `expected_sha256`: the seeds row's checkpoint fingerprint; another file is refused."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint not found: {checkpoint}")
    found = file_sha256(checkpoint) if expected_sha256 else None
    if found != expected_sha256:
        raise CheckpointMismatch(
            f"checkpoint {checkpoint} is not the one its seeds row recorded (sha256 "
            f"{found[:12]}…, not {expected_sha256[:12]}…): a later run of the "
            f"same name, dataset and seed wrote it; train that seed again, and give each results "
            f"folder its own --model-save-dir")
    args = EasyDict(dict(config))
    feature_file = Path(feature_file or args.get("feature_file") or args["custom_feature"])
    args["custom_feature"] = str(feature_file)
    args["device"] = _device(config)
    check_feature_files(args)
    other = bool(args.get("feature_sha256")) and file_sha256(feature_file) != args["feature_sha256"]

    loaders = registry.build_dataloaders(args, 0)
    model = registry.build_model(args).to(args.device)
    try:
        state = torch.load(checkpoint, map_location=args.device)
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError, pickle.UnpicklingError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointMismatch(
            f"checkpoint {checkpoint} does not fit a '{args['model_name']}' model built from its "
            f"config ({first}): pass the seeds row or config of the run that wrote it"
        ) from None
    model.eval()
    trainer = registry.build_trainer(args)
    return LoadedRun(args, model, trainer, loaders, checkpoint, feature_file, other)


def in_order(loader: DataLoader) -> DataLoader:
    """`loader`'s split in file order (MMSA's loaders shuffle every split), same batch size:
    every model and every pass sees the same batches."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                      num_workers=0)
