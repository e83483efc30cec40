"""Helpers shared by the test modules (pytest puts this folder on sys.path)."""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

# Tiny widths: a run-level test is about the plumbing, not the capacity.
SMALL_IIDAF = {"d_model": 32, "enc_layers": [1, 1, 1], "enc_heads": [2, 2, 2],
               "shared_heads": 2, "mic_proj_dim": 16, "disc_hidden": 16, "batch_size": 16,
               "learning_rate": 1e-3}
# IIDAF's peers (aofl, mgrl, fdrl) take the same front-end keys, without IIDAF's MIC widths.
SMALL_PEER = {key: value for key, value in SMALL_IIDAF.items()
              if key not in ("mic_proj_dim", "disc_hidden")}


def iidaf_run_args(feature_file, model_save_path, **overrides):
    """The prepared args of a one-epoch IIDAF run at SMALL_IIDAF widths on `feature_file`
    (MOSI layout), CPU, regression, seed 1; `overrides` last. What a trainer test builds its
    loaders, model and trainer from."""
    import torch
    from easydict import EasyDict

    from mmsa_iidaf import registry, runs

    args = EasyDict(registry.config_for("iidaf", "mosi"))
    args.update({**SMALL_IIDAF, "max_epochs": 1, "early_stop": 1, "model_name": "iidaf",
                 "dataset_name": "mosi", "custom_feature": str(feature_file), "feature_T": None,
                 "feature_A": None, "feature_V": None, "device": torch.device("cpu"), "seed": 1,
                 "cur_seed": 1, "train_mode": "regression",
                 "model_save_path": str(model_save_path), **overrides})
    runs.prepare_args(args)
    return args


def peer_args(name: str, **overrides):
    """A peer's config for mosi at SMALL_PEER widths, regression, CPU; `overrides` last."""
    from easydict import EasyDict

    from mmsa_iidaf import registry

    args = EasyDict(registry.config_for(name, "mosi"))
    args.update({**SMALL_PEER, "feature_dims": [48, 5, 20], "train_mode": "regression",
                 "device": "cpu", **overrides})
    return args


def peer_inputs(batch: int, seed: int = 0):
    """(text, audio, vision) of `batch` random samples with peer_args' feature widths."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 6, 48, generator=generator),
            torch.randn(batch, 7, 5, generator=generator),
            torch.randn(batch, 5, 20, generator=generator))


def run_folders(root: Path) -> dict:
    """MMSA_run keywords for a quiet CPU run writing under `root`, loading data in-process
    (worker processes cost seconds)."""
    return {"model_save_dir": root / "models", "res_save_dir": root / "results",
            "log_dir": root / "logs", "gpu_ids": [], "num_workers": 0, "verbose_level": 0}


def close_mmsa_handlers() -> None:
    """MMSA_run leaves a file and a console handler on its logger: close them."""
    logger = logging.getLogger("MMSA")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def run_cli_in_process(argv, monkeypatch, capsys, threads: int | None = None):
    """`python run.py ARGV` as run.py's main() in this process: a CompletedProcess with its exit
    status (argparse's SystemExit included), stdout and stderr. It saves a Python start-up
    (seconds of imports) per call; one test per entry point keeps a real process. `threads`:
    the intra-op threads for the call (a subprocess's OMP_NUM_THREADS); the test process's own
    count, main()'s global warning hook and MMSA's log handlers are restored after it."""
    import subprocess
    import warnings

    import torch

    from mmsa_iidaf import cli

    argv = [str(arg) for arg in argv]
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    own_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    finally:
        torch.set_num_threads(own_threads)
        close_mmsa_handlers()
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["run.py", *argv], status, captured.out, captured.err)


def import_benchmark(monkeypatch, name: str):
    """benchmarks/NAME.py imported in this process and registered as NAME until the test ends
    (dataclasses look their module up there, and scaling.py and eval_path.py import speed.py by
    that name); TQDM_DISABLE, which speed.py sets when imported, is restored too."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module
