"""`python -m mmsa_iidaf.tune`: hyper-parameter search with Optuna, chosen on the validation split.

    python -m mmsa_iidaf.tune -m iidaf -d mosi -f FILE --trials 20 \\
        --storage sqlite:///tune.db --study iidaf-mosi [--space FILE] [--best-config FILE]

TPE sampler and a median pruner fed every epoch's validation `KeyEval`; or, with `--grid`, every
combination of a list-valued space, each trained to its end (a grid compares its points, so none is
pruned on another's early epochs). The search space is the model's
`debugParams` in `configs/config_tune.json` (MMSA's tuning config: `d_paras` names the
parameters, each with its list of values), or `--space FILE`. Any number of processes, on one
machine or many, started with the same `--storage` (any Optuna RDB URL: SQLite, PostgreSQL,
MySQL) and `--study` share the trials: Optuna's own distributed mode. `--trials` counts this
process's trials. A trial trains on the train split and is scored on the validation split by the
model's `KeyEval`; the test split is never built. At the end, the best trial so far is written as
a config file for `run.py -c` and printed.

MMSA's own `-t` (random search in one process) keeps working; this is its TPE, pruned, several-
worker counterpart.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from easydict import EasyDict

from . import registry, runs
from .cli import seed_number, worker_count
from .errors import ConfigError, UserError

DEFAULT_STORAGE = "sqlite:///tune.db"


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("tuning needs Optuna, which is not installed: "
                          "pip install -e \".[tune]\" (or pip install optuna)") from None
    return optuna


# --- the search space ------------------------------------------------------------------------

def space_from_tune_config(model: str, config_file=None) -> dict:
    """The space of the model's debugParams in the merged tuning config."""
    config = registry.merged_config("tune", config_file)
    debug = config.get(model, {}).get("debugParams")
    if not debug or not debug.get("d_paras"):
        raise ConfigError(f"no search space for '{model}': configs/config_tune.json has no "
                          f"debugParams.d_paras for it; pass --space FILE")
    return from_debug_params(debug, "the tuning config's debugParams")


def from_debug_params(debug: dict, source: str) -> dict:
    """MMSA's tuning layout as MMSA's random search reads it: each name of `d_paras` is a list
    of values, a fixed value (one choice here), or a section whose keys are lists of values,
    each chosen apart ("NN1Config.drop", nested again by `suggest`)."""
    missing = [name for name in debug["d_paras"] if name not in debug]
    if missing:
        raise ConfigError(f"{source}: d_paras names {', '.join(missing)}, which it does not "
                          f"list: add their values or drop them from d_paras")
    space = {}
    for name in debug["d_paras"]:
        values = debug[name]
        if isinstance(values, dict) and not {"low", "high"} <= set(values):
            for key, choices in values.items():
                space[f"{name}.{key}"] = choices if isinstance(choices, list) else [choices]
        else:
            space[name] = values if isinstance(values, (list, dict)) else [values]
    return space


def read_space(path: Path) -> dict:
    """--space FILE: {name: [values]} (a categorical choice) or {name: {"low": ..., "high": ...,
    "log": bool, "step": ...}} (a range), or MMSA's debugParams layout (`d_paras` + lists)."""
    try:
        space = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"--space {path}: {error}") from None
    if not isinstance(space, dict):
        raise ConfigError(f"--space {path}: holds a JSON {type(space).__name__}; write an object "
                          f"{{\"name\": [values], ...}}")
    if "d_paras" in space:
        space = from_debug_params(space, f"--space {path}")
    for name, values in space.items():
        ranged = isinstance(values, dict) and {"low", "high"} <= set(values)
        if not ranged and not (isinstance(values, list) and values):
            raise ConfigError(f"--space {path}: '{name}' must be a non-empty list of values or "
                              f"{{\"low\": ..., \"high\": ...}}")
        if ranged and not (isinstance(values["low"], (int, float))
                           and isinstance(values["high"], (int, float))
                           and values["low"] <= values["high"]):
            raise ConfigError(f"--space {path}: '{name}' needs numbers low <= high, got "
                              f"{values['low']!r} and {values['high']!r}")
        if ranged and values.get("log") and (values["low"] <= 0 or "step" in values):
            raise ConfigError(f"--space {path}: '{name}' is on a log scale: give low > 0 and "
                              f"no step")
    return space


def _categorical(choices: list) -> list:
    """Choices as Optuna stores them: plain numbers and text as they are, MMSA's nested lists
    (e.g. hidden_dims) by their JSON text."""
    if all(isinstance(c, (bool, int, float, str)) or c is None for c in choices):
        return list(choices)
    return [json.dumps(c) for c in choices]


def grid_of(space: dict) -> dict:
    """--grid: the space as GridSampler's search space; only lists of values can be gridded."""
    ranges = [name for name, choices in space.items() if isinstance(choices, dict)]
    if ranges:
        raise ConfigError(f"--grid needs a list of values for every parameter; "
                          f"{', '.join(ranges)} {'is a' if len(ranges) == 1 else 'are'} "
                          f"range(s): list the values to try")
    return {name: _categorical(choices) for name, choices in space.items()}


def suggest(trial, space: dict) -> dict:
    """One value per parameter. Lists of values that are not plain numbers or text (MMSA's
    nested lists, e.g. hidden_dims) are chosen by their JSON text, which Optuna can store."""
    values = {}
    for name, choices in space.items():
        if isinstance(choices, dict):
            low, high = choices["low"], choices["high"]
            kind = trial.suggest_int if all(isinstance(v, int) for v in (low, high)) \
                else trial.suggest_float
            values[name] = kind(name, low, high, log=bool(choices.get("log", False)),
                                **({"step": choices["step"]} if "step" in choices else {}))
        else:
            stored = _categorical(choices)
            value = trial.suggest_categorical(name, stored)
            values[name] = value if stored == list(choices) else json.loads(value)
    return nested(values)


def nested(values: dict) -> dict:
    """{"NN1Config.drop": 0.2, "NN1Config.shapes": 64} → {"NN1Config": {"drop": 0.2, ...}}."""
    config = {}
    for name, value in values.items():
        section, _, key = name.partition(".")
        if key:
            config.setdefault(section, {})[key] = value
        else:
            config[name] = value
    return config


# --- one trial: train, then score on the validation split ------------------------------------

class Trainer:
    """Trains one configuration of `model` on the train split and scores it on the validation
    split; the test split is never built."""

    def __init__(self, options, overrides: dict, feature: str | None):
        self.options = options
        self.overrides = overrides
        self.feature = feature
        base = self.preview({})
        runs.check_feature_files(base)
        self.key = base.get("KeyEval", "Loss")
        self.direction = "minimize" if self.key == "Loss" else "maximize"
        # What every trial shares (config, fixed settings, feature file): a study's trials
        # score one setup only.
        self.setup = (f"{runs.config_fingerprint(base)}:"
                      f"{runs.file_sha256(runs.feature_files(base)[0])}")

    def preview(self, values: dict) -> dict:
        o = self.options
        config = runs.run_config(o.model, o.dataset, {**self.overrides, **values},
                                 o.scratch)
        return runs.preview_config(o.model, o.dataset, o.config, config,
                                   custom_feature=self.feature, feature_T=None,
                                   feature_A=None, feature_V=None)

    def check_space(self, space: dict, source: str) -> None:
        """Every value the space can give (each choice, a range's ends) checked alone for its
        kind and range before any trial: a bad one is one line, not a trial's traceback.
        Rules over several keys (IIDAF's d_model and heads) are the trial's (`__call__`)."""
        for name, choices in space.items():
            if "." in name:  # a value inside a section: the model reads it
                continue
            for value in ((choices["low"], choices["high"]) if isinstance(choices, dict)
                          else choices):
                try:
                    runs.check_numbers(self.options.model, self.preview({name: value}))
                except ConfigError as error:
                    raise ConfigError(f"{source}: {error}") from None

    def __call__(self, trial, values: dict) -> float:
        import torch

        optuna = _import_optuna()
        args = EasyDict(self.preview(values))
        try:
            runs.check_values(self.options.model, args)
        except ConfigError as error:
            # A combination the model refuses (e.g. d_model not divisible by the heads) costs
            # this trial only, and nothing trains; Optuna logs the reason in one line.
            trial.set_user_attr("refused", str(error))
            raise optuna.TrialPruned(str(error)) from None
        args.update(device=registry.device_for(runs.select_gpus(self.options.gpu_ids)),
                    model_save_path=Path(self.options.scratch) / f"trial{trial.number}.pth",
                    seed=self.options.seed, cur_seed=1)
        registry.seed_everything(self.options.seed)
        runs.prepare_args(args)
        loaders = registry.build_dataloaders(args, self.options.num_workers,
                                             splits=("train", "valid"))
        model = registry.build_model(args).to(args.device)
        trainer = registry.build_trainer(args)
        validated = trainer.do_test
        epoch = 0

        def report_each_validation(model, loader, mode="VAL", **kwargs):
            nonlocal epoch
            results = validated(model, loader, mode=mode, **kwargs)
            if mode == "VAL":
                epoch += 1
                # The value the study's direction is for: KeyEval, as the trial's final score.
                trial.report(float(results[self.key]), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")
            return results

        trainer.do_test = report_each_validation
        try:
            trainer.do_train(model, loaders)
            checkpoint = Path(args.model_save_path)
            if checkpoint.is_file():
                model.load_state_dict(torch.load(checkpoint, map_location=args.device))
            results = validated(model, loaders["valid"], mode="VALID")
        finally:
            Path(args.model_save_path).unlink(missing_ok=True)
        for name, value in results.items():
            trial.set_user_attr(f"valid_{name}", float(value))
        return float(results[self.key])


def _same_trial(study, values: dict):
    """A finished trial of the study with exactly these values, if any."""
    optuna = _import_optuna()
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for other in study.get_trials(deepcopy=False, states=finished):
        if other.params == values:
            return other
    return None


def objective(train: Trainer, space: dict):
    optuna = _import_optuna()

    def run_trial(trial) -> float:
        values = suggest(trial, space)
        trial.set_user_attr("values", values)  # as the config takes them (lists included)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        # TPE over a small discrete space proposes a finished configuration again: its result
        # is reused rather than trained twice (MMSA's random search skips such repeats too).
        earlier = _same_trial(trial.study, trial.params)
        if earlier is not None:
            trial.set_user_attr("same_as_trial", earlier.number)
            if earlier.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned(f"as trial {earlier.number}")
            return earlier.value
        return train(trial, values)

    return run_trial


# --- the study and its best configuration ----------------------------------------------------

def storage_for(url: str):
    import sqlalchemy.exc

    optuna = _import_optuna()
    # SQLite serialises writers: a worker waits for the lock instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except Exception as error:  # a bad URL or an unreachable server: SQLAlchemy's types
            # Workers started together all create the schema; all but one lose that race (a
            # duplicate row, or "table ... already exists") and find it made a moment later.
            lost_race = isinstance(error, sqlalchemy.exc.IntegrityError) or (
                isinstance(error, sqlalchemy.exc.OperationalError)
                and "already exists" in str(error))
            if lost_race:
                time.sleep(1 + attempt)
                continue
            raise ConfigError(f"--storage {url}: {type(error).__name__}: "
                              f"{str(error).strip().splitlines()[0]} (give an RDB URL such as "
                              f"sqlite:///tune.db or postgresql://user:pw@host/db)") from None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def best_config(study, options, overrides: dict) -> dict:
    """A config file for `run.py -c` with the best trial's values: the user's config file, with
    the values (and the --set overrides) in the model's datasetParams for the dataset, which
    MMSA reads last."""
    base = json.loads(Path(options.config).read_text()) if options.config else {}
    section = base.setdefault(options.model, {})
    dataset = section.setdefault("datasetParams", {}).setdefault(options.dataset, {})
    dataset.update({**overrides, **study.best_trial.user_attrs["values"]})
    return base


def trials_table(study) -> str:
    """Every finished trial, its values and validation metrics, as a Markdown table: the record
    of a selection (e.g. benchmarks/)."""
    optuna = _import_optuna()
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                       optuna.trial.TrialState.PRUNED)]
    params = sorted({name for t in finished for name in t.params})
    metrics = sorted({name for t in finished for name in t.user_attrs
                      if name.startswith("valid_")})
    lines = ["| trial | state | " + " | ".join(params + metrics) + " |",
             "|---" * (2 + len(params) + len(metrics)) + "|"]
    for t in finished:
        cells = [str(t.number), t.state.name.lower()]
        cells += [str(t.params.get(name, "")) for name in params]
        cells += [f"{t.user_attrs[name]:.4f}" if name in t.user_attrs else ""
                  for name in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmsa_iidaf.tune",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", required=True, type=str.lower)
    parser.add_argument("-d", "--dataset", required=True, type=str.lower)
    parser.add_argument("-f", "--feature", default=None, help="a whole MMSA feature pickle")
    parser.add_argument("-c", "--config", default=None,
                        help="config file over the defaults, as for run.py")
    parser.add_argument("--trials", type=int, default=None,
                        help="this worker's trials (with --grid: default, until the grid is done)")
    parser.add_argument("--grid", action="store_true",
                        help="try every combination of the space's lists, none pruned")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna RDB URL")
    parser.add_argument("--study", default=None, help="study name (default MODEL-DATASET)")
    parser.add_argument("--space", default=None, type=Path,
                        help="search space file (default: debugParams of config_tune.json)")
    parser.add_argument("--best-config", default=None, type=Path,
                        help="where to write the best trial's config (default STUDY-best.json)")
    parser.add_argument("-s", "--seed", type=seed_number, default=1111,
                        help="training seed of trials")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fixed override for every trial, as for run.py")
    parser.add_argument("--modalities", default=None)
    parser.add_argument("-g", "--gpu-ids", action="append", type=int, default=[])
    parser.add_argument("-n", "--num-workers", type=worker_count, default=0)
    parser.add_argument("--sampler-seed", type=int, default=None,
                        help="TPE's seed (default: none, so workers propose different trials)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .cli import parse_setting

    options = build_parser().parse_args(argv)
    try:
        optuna = _import_optuna()
        registry.check_names(options.model, options.dataset)
        if options.trials is None and not options.grid:
            raise ConfigError("--trials: give the number of trials (or --grid to try every "
                              "combination of the space)")
        if options.trials is not None and options.trials < 1:
            raise ConfigError(f"--trials {options.trials}: give 1 or more")
        overrides = dict(parse_setting(item) for item in options.set)
        if options.modalities is not None:
            overrides["modalities"] = options.modalities
        space = (read_space(options.space) if options.space
                 else space_from_tune_config(options.model, options.config))
        if options.grid:
            sampler = optuna.samplers.GridSampler(grid_of(space), seed=options.sampler_seed)
            pruner = optuna.pruners.NopPruner()
        else:
            sampler = optuna.samplers.TPESampler(seed=options.sampler_seed)
            pruner = optuna.pruners.MedianPruner()
        options.study = options.study or f"{options.model}-{options.dataset}"
        best_path = options.best_config or Path(f"{options.study}-best.json")
        if not best_path.absolute().parent.is_dir():  # found out after the trials, else
            raise ConfigError(f"--best-config {best_path}: its folder does not exist; make it "
                              f"or give another path")
        with tempfile.TemporaryDirectory(prefix="mmsa-iidaf-tune-") as scratch:
            options.scratch = scratch
            train = Trainer(options, overrides, options.feature)
            train.check_space(space, f"--space {options.space}" if options.space
                              else "the tuning config's debugParams")
            study = optuna.create_study(
                study_name=options.study, storage=storage_for(options.storage),
                load_if_exists=True, direction=train.direction, sampler=sampler, pruner=pruner)
            if study.direction.name.lower() != train.direction:
                raise ConfigError(f"study '{options.study}' in {options.storage} "
                                  f"{study.direction.name.lower()}s, but {options.model}'s "
                                  f"KeyEval {train.key} is to {train.direction}: use another "
                                  f"--study")
            setup = study.user_attrs.get("setup")
            if setup is None:
                study.set_user_attr("setup", train.setup)
            elif setup != train.setup:
                raise ConfigError(f"study '{options.study}' in {options.storage} was made with "
                                  f"another config, fixed settings or feature file: its trials "
                                  f"would be reused for this one; use another --study")
            study.optimize(objective(train, space), n_trials=options.trials)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            print(f"no trial of study '{options.study}' has finished yet", file=sys.stderr)
            return 1
        config = best_config(study, options, overrides)
        path = best_path
        path.write_text(json.dumps(config, indent=2) + "\n")
        best = study.best_trial
        print(f"best of {len(complete)} finished trial(s) in study '{options.study}': trial "
              f"{best.number}, valid {train.key} {best.value:.4f}, {best.params}")
        print(f"config written to {path}: python run.py -m {options.model} -d {options.dataset} "
              f"-c {path}")
        print(json.dumps(config, indent=2))
        print(trials_table(study))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished trials stay in {options.storage}; the same command "
              f"continues the study", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
