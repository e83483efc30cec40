"""`python -m mmsa_iidaf.analysis CHECKPOINT -d DATASET -f FILE --out DIR`: the paper's
interpretability figures and tables (Fig. 4, Fig. 5, Table 8) and disentanglement numbers of one
IIDAF checkpoint, or t-SNE and the same disentanglement numbers of a peer's (aofl, mgrl, fdrl),
on the test split. The run's config comes from its seeds row (found by the
checkpoint's path, or by the name, dataset and seed in its file name) or from --config-json.
A mistake the user can fix prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

# Importing the package installs the plugin: MMSA then builds iidaf and reads its data.
from mmsa_iidaf.errors import ConfigError, UserError

from .checkpoint import find_seed_row, load_run, read_config_json, recorded_sha256
from .report import analyse


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m mmsa_iidaf.analysis",
                            description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("checkpoint", type=Path,
                        help="a seed's {model_save_dir}/{name}-{dataset}-seed{seed}.pth")
    parser.add_argument("-d", "--dataset", type=str.lower, default=None,
                        help="the run's dataset (checked against its config)")
    parser.add_argument("-f", "--feature", type=Path, default=None,
                        help="feature pickle to read the test split from (default: the run's)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    parser.add_argument("--res-save-dir", type=Path, default=Path.home() / "MMSA" / "results",
                        help="where the run's *-seeds.csv files are (default ~/MMSA/results)")
    parser.add_argument("--seeds-csv", type=Path, default=None,
                        help="the run's {name}-{dataset}-seeds.csv (instead of --res-save-dir)")
    parser.add_argument("--config-json", type=Path, default=None,
                        help="the run's config as JSON (a seeds row's `config`), instead of a "
                             "seeds row")
    parser.add_argument("--tsne-samples", type=int, default=1000,
                        help="test samples drawn for t-SNE at most (default 1000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    options = build_parser().parse_args(argv)
    try:
        expected_sha256 = None
        if options.config_json:
            config = read_config_json(options.config_json)
            source = f"`{options.config_json}`"
        else:
            row = find_seed_row(options.checkpoint, options.seeds_csv, options.res_save_dir)
            config = json.loads(row["config"])
            expected_sha256 = recorded_sha256(row)
            source = (f"seeds row of {row.get('name', row['model'])}, seed {row['seed']}, "
                      f"finished {row.get('finished_at', '?')}")
        if options.dataset and options.dataset != config["dataset_name"]:
            raise ConfigError(
                f"-d {options.dataset}, but checkpoint {options.checkpoint} was trained on "
                f"{config['dataset_name']}: pass -d {config['dataset_name']}"
            )
        run = load_run(config, options.checkpoint, options.feature, expected_sha256)
        if run.other_features:
            print(f"warning: {run.feature_file} is not the feature file the checkpoint was "
                  f"trained on (sha256 differs); analysing it anyway", file=sys.stderr)
        command = shlex.join(["python", "-m", "mmsa_iidaf.analysis", *argv])
        paths = analyse(run, options.out, command, source, options.tsne_samples)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(path.name for path in paths.values())} in {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
