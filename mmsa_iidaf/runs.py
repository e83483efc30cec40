"""A run around MMSA's training loop: checks before it starts and a record of every seed.

`make_mmsa_run` builds the `MMSA_run` that `import mmsa_iidaf` puts in MMSA's place: MMSA's
signature and behaviour, plus name checks, feature-file checks before any training, the GPU
fallback warning, and a per-seed results file. `prepare_args` runs before each seed,
`record_seed`, `write_predictions` and `write_diagnostics` after it (`compat.run_one_seed` calls
them; `wiring` hangs them there).

A run may carry a `run_name` in its config (an ablation's `iidaf[-mic]`): its seeds file,
checkpoints and predictions are named by it instead of the model, so variants never mix.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import pickle
import warnings
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from . import compat, encoder_cache, registry
from .data.validate import load_and_validate
from .errors import ConfigError, FeatureFileError, TrainingDiverged, config_number
from .text_encoders import encoder_width, resolve_pretrained
from .trainers.averaging import ema_decay
from .trainers.distill import check_distill_init, check_student_checkpoints
from .trainers.joint import clip_scope

DEFAULT_HOME = Path.home() / "MMSA"
MODALITIES = "tav"
# MMSA models that always read text through BERT, whatever `use_bert` says.
BERT_ONLY_MODELS = ("bert_mag", "tfr_net")


# MMSA models whose training is undefined when `--modalities` zeroes a modality they fuse.
NEEDS_EVERY_MODALITY = {
    # MMILB's entropy term is the log-determinant of the covariance of each modality's features
    # over a batch: a zeroed modality gives every sample the same features, logdet(0) = -inf,
    # and the loss is NaN from the first epoch on.
    "mmim": "its entropy estimate, logdet of each modality's feature covariance, is -inf on a "
            "zeroed modality (NaN loss from the first epoch)",
}


def normalize_modalities(value) -> str:
    """'t,a' / 'ta' / ['t', 'a'] -> 'ta' (always in t, a, v order)."""
    letters = value if isinstance(value, (list, tuple)) else str(value).replace(",", "")
    letters = [letter.strip().lower() for letter in letters if str(letter).strip()]
    unknown = sorted(set(letters) - set(MODALITIES))
    if unknown or not letters:
        raise ConfigError(
            f"modalities {value!r}: use a non-empty subset of t, a, v (for example 't,a')"
        )
    return "".join(m for m in MODALITIES if m in letters)


def uses_bert(args) -> bool:
    return bool(args.get("use_bert")) or args.get("model_name") in BERT_ONLY_MODELS


def frozen_text_encoder(args) -> bool:
    """Whether the run reads text through a BERT-family encoder it does not fine-tune."""
    if not uses_bert(args) or args.get("model_name") == "bert_mag":  # BERT_MAG always fine-tunes
        return False
    finetune_key = "use_bert_finetune" if args.get("model_name") == "tfr_net" else "use_finetune"
    return not args.get(finetune_key, False)


def feature_files(args) -> list[Path]:
    """Every feature pickle the run reads: the whole file, then per-modality overrides."""
    main = args.get("custom_feature") or args["featurePath"]
    extra = [args.get(key) for key in ("feature_T", "feature_A", "feature_V")]
    return [Path(main)] + [Path(path) for path in extra if path]


def check_feature_files(args) -> None:
    """Every problem of the feature files that would stop or spoil training, before it starts."""
    main, *overrides = feature_files(args)
    if not main.is_file():
        default = Path(args["featurePath"])
        raise FeatureFileError(
            f"feature file not found: {main} (MMSA's default for {args['dataset_name']} is "
            f"{default}, set by datasetCommonParams in the config): pass your feature pickle "
            f"with -f PATH (MMSA_run(custom_feature=PATH)), or try --demo"
        )
    # The official file of a dataset must have the config's widths; a custom file sets its own.
    official = not args.get("custom_feature")
    load_and_validate(
        main,
        use_bert=uses_bert(args),
        expected_dims=list(args["feature_dims"]) if official else None,
        label_range=registry.label_range(args["dataset_name"]),
        need_lengths=not args.get("need_data_aligned"),
        whole_labels=registry.dataset_task(args["dataset_name"]) == "classification",
    )
    # feature_files' order after the whole file: the per-modality files given.
    flags = [flag for key, flag in (("feature_T", "-Ft"), ("feature_A", "-Fa"),
                                    ("feature_V", "-Fv")) if args.get(key)]
    for path, flag in zip(overrides, flags):
        try:
            with open(path, "rb") as handle:
                readable = isinstance(pickle.load(handle), dict)
        except FileNotFoundError:
            raise FeatureFileError(f"feature file not found: {path} (given with {flag}): check "
                                   f"the path") from None
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                ImportError, IndexError, KeyError):
            readable = False
        if not readable:
            raise FeatureFileError(f"{path} (given with {flag}) is not an MMSA feature pickle "
                                   f"(a dict of splits): give the modality's feature file")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_args(args) -> None:
    """Before each seed: settle what the run uses, once, and record it in `args`."""
    args["modalities"] = normalize_modalities(args.get("modalities", MODALITIES))
    encoder_cache.clear()  # only this run's splits may answer its encoder
    if uses_bert(args) and "text_encoder" not in args:
        name = args.get("pretrained", "bert-base-uncased")
        path = resolve_pretrained(name)
        args["text_encoder"] = f"{name} ({path})"
        args["pretrained"] = str(path)
        args["text_width"] = encoder_width(str(path))
    if "feature_file" not in args:
        path = feature_files(args)[0]
        args["feature_file"] = str(path.resolve())
        args["feature_sha256"] = file_sha256(path)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def run_name(args) -> str:
    return args.get("run_name") or args["model_name"]


def seeds_csv_path(args) -> Path:
    return seeds_csv(args["res_save_dir"], run_name(args), args["dataset_name"])


def seeds_csv(res_save_dir, name: str, dataset_name: str) -> Path:
    return Path(res_save_dir) / f"{name}-{dataset_name}-seeds.csv"


def predictions_path(res_save_dir, name: str, dataset_name: str, seed: int) -> Path:
    return Path(res_save_dir) / "predictions" / f"{name}-{dataset_name}-seed{seed}.npz"


def write_predictions(args, results, is_tune: bool, seed_run) -> None:
    """The test split's per-sample predictions of this seed: `id`, `y_true`, `y_pred` (one value
    per sample, or a classifier's logits), for paired statistics over samples."""
    if seed_run.predictions is None or "res_save_dir" not in args:
        return
    path = predictions_path(args["res_save_dir"], run_name(args), args["dataset_name"],
                            args["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **seed_run.predictions)


def write_diagnostics(args, results, is_tune: bool, seed_run) -> None:
    """For a model whose trainer can `diagnose`: the test split's diagnostics of this seed, in
    {res}/diagnostics/{name}-{dataset}-seed{seed}.json, `name` the run's (an ablation's
    variant, e.g. `iidaf[-mic]`, has its own file)."""
    if is_tune or "res_save_dir" not in args or not hasattr(seed_run.trainer, "diagnose"):
        return
    report = seed_run.trainer.diagnose(seed_run.model, seed_run.dataloader["test"])
    report = {"model": args["model_name"], "name": run_name(args),
              "dataset": args["dataset_name"], "seed": args["seed"], "split": "test", **report}
    directory = Path(args["res_save_dir"]) / "diagnostics"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{run_name(args)}-{args['dataset_name']}-seed{args['seed']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")


def validation_results(seed_run) -> dict:
    """`valid_{metric}` of the kept checkpoint on the validation split, the numbers a choice
    between configurations reads (the test split's are for reporting only). Evaluated after the
    test, so the test results are those of MMSA's run either way."""
    if seed_run is None or "valid" not in seed_run.dataloader:
        return {}
    # do_test, not the IIDAF trainer's validate: that one would choose the fused modalities
    # again, while the checkpoint's choice is the one to score.
    results = seed_run.trainer.do_test(seed_run.model, seed_run.dataloader["valid"], mode="VAL")
    return {f"valid_{name}": _plain(value) for name, value in results.items()}


def check_finite_test(args, results: dict, training: Path) -> None:
    """A "tested" run hook: TrainingDiverged, in one line, when the test loss is not finite.
    The plugin's trainer stops at the first non-finite loss; MMSA's own trainers go on and would
    record the NaN metrics as the seed's result and its NaN weights as the seed's checkpoint.
    Not an MMSA defect (MMSA has no rule for a diverged run) but the plugin's rule, for every
    model; raised before the checkpoint is replaced or the row written."""
    loss = results.get("Loss")
    if loss is None or math.isfinite(loss):
        return
    kept = (f"its last saved checkpoint {training} is kept" if training.exists()
            else "no checkpoint was saved")
    raise TrainingDiverged(
        f"seed {args['seed']}: {args['model_name']}'s test loss is {loss} (its training "
        f"diverged); the seed's result is not recorded and {kept}: lower learning_rate"
    )


def record_seed(args, results, is_tune: bool, seed_run=None) -> None:
    """Append this seed's results as one row, at once, so that a later crash loses nothing:
    the test split's metrics, then (after the run's identity) the validation split's
    (`valid_` + metric) of the same checkpoint.

    The row records what the number depends on beyond the seed: the config, the data file, the
    device, torch's version and its CPU thread count (the same seed gives other numbers with
    another thread count)."""
    if is_tune or "res_save_dir" not in args or "final_results" in results:
        return
    metrics = {name: _plain(value) for name, value in results.items()}
    row = {"seed": args["seed"], **metrics}
    row.update({
        "model": args["model_name"],
        "name": run_name(args),
        "dataset": args["dataset_name"],
        "modalities": args["modalities"],
        "text_encoder": args.get("text_encoder", "none"),
        "feature_file": args["feature_file"],
        "feature_sha256": args["feature_sha256"],
        "device": str(args["device"]),
        "torch_version": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "checkpoint": str(args["model_save_path"]),
        # Every run of this name, dataset and seed writes the same file (whatever its config
        # or results folder): the fingerprint lets robustness and analysis refuse a rewritten one.
        "checkpoint_sha256": (file_sha256(Path(args["model_save_path"]))
                              if Path(args["model_save_path"]).is_file() else ""),
        **validation_results(seed_run),
        "config_sha256": args.get("config_sha256", ""),
        "config": json.dumps({k: v for k, v in args.items()}, default=str, sort_keys=True),
    })
    path = seeds_csv_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([row])
    if path.is_file():
        table = pd.concat([pd.read_csv(path), table], ignore_index=True)
    partial = path.with_suffix(".csv.partial")
    table.to_csv(partial, index=False)
    os.replace(partial, path)


def select_gpus(gpu_ids) -> list:
    """None: the freest GPU if there is one, else the CPU (MMSA's []). A GPU asked for on a
    machine without one: the CPU, with a warning."""
    gpu_ids = list(gpu_ids or [])
    if gpu_ids and not torch.cuda.is_available():
        warnings.warn(f"GPU {gpu_ids} asked for, but no GPU is available: running on the CPU",
                      stacklevel=3)
        return []
    return gpu_ids


def run_config(model_name: str, dataset_name: str, config: dict | None, res_save_dir) -> dict:
    """The `config=` overrides MMSA's own MMSA_run gets: the caller's, completed."""
    config = dict(config or {})
    config.setdefault("train_mode", registry.train_mode(model_name, dataset_name))
    config["modalities"] = normalize_modalities(config.get("modalities", MODALITIES))
    if model_name in NEEDS_EVERY_MODALITY and config["modalities"] != MODALITIES:
        raise ConfigError(
            f"{model_name} cannot run with modalities '{','.join(config['modalities'])}': "
            f"{NEEDS_EVERY_MODALITY[model_name]}; run it on t, a, v (leave out --modalities)"
        )
    config["res_save_dir"] = str(res_save_dir)
    return config


def preview_config(model_name: str, dataset_name: str, config_file, config: dict,
                   is_tune: bool = False, **feature_paths) -> dict:
    """The config a run will start from, before MMSA adds the device and the seed."""
    preview = registry.config_for(model_name, dataset_name, config_file, tune=is_tune)
    preview.update(config)
    preview.update(feature_paths)
    return preview


# Where the results and the data are read from is not what the numbers depend on (the data's
# content is: its sha256 has a column of its own).
_NOT_FINGERPRINTED = ("res_save_dir", "custom_feature", "feature_T", "feature_A", "feature_V",
                      "config_sha256")


def config_fingerprint(preview) -> str:
    """sha256 of a run's config as `preview_config` builds it: two runs with the same
    fingerprint, feature sha256 and seed are the same run (the comparison skips it)."""
    settings = {k: v for k, v in preview.items() if k not in _NOT_FINGERPRINTED}
    # A per-modality file counts by its content, as the main file does (its sha256 in the row).
    for key in ("feature_T", "feature_A", "feature_V"):
        if preview.get(key) and Path(preview[key]).is_file():  # a missing one is refused later
            settings[f"{key}_sha256"] = file_sha256(Path(preview[key]))
    text = json.dumps(settings, default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# Keys only this plugin's trainer reads: what MMSA's trainers would silently ignore.
PLUGIN_TRAINER_KEYS = {"distill_from": "reads no teacher", "ema_decay": "averages no weights",
                       "grad_clip_scope": "has no clipping scope"}


# Counts MMSA's trainers loop over: a text or a number below 1 fails mid-run with a traceback.
WHOLE_COUNTS = ("batch_size", "early_stop", "max_epochs", "update_epochs")


def check_numbers(model_name: str, preview: dict) -> None:
    """ConfigError in one line, before training, for a text where the model's registered config
    has a number (`--set learning_rate=abc`, `"early_stop": "x"`), a count below 1 and a
    negative learning rate."""
    defaults = registry.config_for(model_name, preview["dataset_name"])
    for key, default in defaults.items():
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and isinstance(preview.get(key), str):
            raise ConfigError(f"config '{key}' = {preview[key]!r} must be a number (the default "
                              f"is {default})")
    for key in WHOLE_COUNTS:
        if key in preview:
            config_number(preview, key, 1, lambda n: n >= 1 and n.is_integer(),
                          "a whole number >= 1")
    for key in preview:
        if key.startswith("learning_rate") and preview[key] is not None:
            config_number(preview, key, 1.0, lambda n: n >= 0, "a number >= 0")


def check_values(model_name: str, preview: dict) -> None:
    """The config's values, each of the kind and range the model and its trainer read."""
    check_numbers(model_name, preview)
    try:
        registry.check_model_settings(model_name, preview)
    except (ValueError, TypeError) as error:  # a text where the model reads a number
        raise ConfigError(f"{model_name}'s config has a value of the wrong kind ({error}): "
                          f"fix it in --set or the config file") from None
    ema_decay(preview)
    clip_scope(preview)


def check_before_training(model_name: str, preview: dict, is_tune: bool = False) -> None:
    """What a run's config (`preview_config`) can be checked for before MMSA makes any folder:
    the trainer's keys, the model's own settings, the feature files, the text encoder,
    `distill_init`."""
    for key, ignored in PLUGIN_TRAINER_KEYS.items():
        if preview.get(key) and model_name not in registry.MODELS:
            raise ConfigError(f"config '{key}': {model_name}'s trainer is MMSA's, which "
                              f"{ignored}; use it with one of "
                              f"{', '.join(sorted(registry.MODELS))}, or drop {key}")
    if not is_tune:  # MMSA's tuning config holds lists of values, MMSA's to draw from
        check_values(model_name, preview)
    check_feature_files(preview)
    if uses_bert(preview):
        resolve_pretrained(preview.get("pretrained", "bert-base-uncased"))
    check_distill_init(preview)


def make_mmsa_run(mmsa_run: Callable) -> Callable:
    """MMSA_run with MMSA's signature, checked before any training starts."""

    def MMSA_run(
        model_name: str, dataset_name: str, config_file: str = None,
        config: dict = None, seeds: list = (), is_tune: bool = False,
        tune_times: int = 50, custom_feature: str = None, feature_T: str = None,
        feature_A: str = None, feature_V: str = None, gpu_ids: list = None,
        num_workers: int = 4, verbose_level: int = 1,
        model_save_dir: str = DEFAULT_HOME / "saved_models",
        res_save_dir: str = DEFAULT_HOME / "results",
        log_dir: str = DEFAULT_HOME / "logs",
    ):
        config_file = compat.normalize_config_file(config_file)
        registry.check_names(model_name, dataset_name)
        model_name, dataset_name = model_name.lower(), dataset_name.lower()
        config = run_config(model_name, dataset_name, config, res_save_dir)
        preview = preview_config(model_name, dataset_name, config_file, config, is_tune,
                                 custom_feature=custom_feature, feature_T=feature_T,
                                 feature_A=feature_A, feature_V=feature_V)
        check_before_training(model_name, preview, is_tune)
        if is_tune:  # MMSA draws the space's values; the ones given here are fixed: checked
            check_numbers(model_name, {"dataset_name": dataset_name, **config})
        if preview.get("distill_from") and not is_tune:
            for seed in list(seeds) or registry.DEFAULT_SEEDS:
                check_student_checkpoints({**preview, "model_name": model_name,
                                           "dataset_name": dataset_name, "seed": seed},
                                          model_save_dir)
        config["config_sha256"] = config_fingerprint(preview)

        return mmsa_run(
            model_name, dataset_name, config_file, config, list(seeds), is_tune, tune_times,
            custom_feature, feature_T, feature_A, feature_V, select_gpus(gpu_ids), num_workers,
            verbose_level, model_save_dir, res_save_dir, log_dir,
        )

    MMSA_run.__doc__ = (mmsa_run.__doc__ or "") + (
        "\n    mmsa_iidaf: names, feature files and the text encoder are checked before any "
        "training;\n    each seed's test results are appended to "
        "{res_save_dir}/{name}-{dataset}-seeds.csv as it finishes, and its per-sample test\n"
        "    predictions written to {res_save_dir}/predictions/{name}-{dataset}-seed{seed}.npz\n"
        "    ({name}: config key run_name, e.g. a variant's 'iidaf[-mic]'; else the model).\n"
    )
    return MMSA_run
