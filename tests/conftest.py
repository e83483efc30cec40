"""Shared fixtures: tiny synthetic feature files, MMSA run folders, an offline hub."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

from mmsa_iidaf.data.synthetic import write_dataset
from support import run_folders

@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The models under test are tiny: a second thread only adds contention on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Small enough that an MMSA baseline trains and tests in about a second.
TINY_SPLITS = {"n_train": 48, "n_valid": 16, "n_test": 16}


@pytest.fixture(scope="session")
def tiny_mosi(tmp_path_factory) -> Path:
    """A MOSI-layout feature pickle with compact shapes (text 48, audio 5, vision 20 wide)."""
    return write_dataset(tmp_path_factory.mktemp("features") / "mosi.pkl", preset="mosi",
                         **TINY_SPLITS)


@pytest.fixture(scope="session")
def tiny_sims(tiny_mosi, tmp_path_factory) -> Path:
    """The tiny file in SIMS' layout: labels in [-1, 1] plus the per-modality labels
    (`regression_labels_T/A/V`) that MMSA's multi-task models (MLF_DNN, MTFN, MLMF) train on."""
    with open(tiny_mosi, "rb") as f:
        data = pickle.load(f)
    for split in data.values():
        split["regression_labels"] = split["regression_labels"] / 3.0
        for modality in "TAV":
            split[f"regression_labels_{modality}"] = split["regression_labels"].copy()
    path = tmp_path_factory.mktemp("features") / "sims.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


@pytest.fixture
def mmsa_logger():
    """MMSA's logger; the handlers a test's MMSA_run calls add are removed and closed after it."""
    logger = logging.getLogger("MMSA")
    before = list(logger.handlers)
    yield logger
    for handler in list(logger.handlers):
        if handler not in before:
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture
def run_dirs(tmp_path, mmsa_logger):
    """`run_dirs(name)`: MMSA_run keyword arguments for a quiet CPU run whose models, results
    and logs go to tmp_path/name (data loading in-process: worker processes cost seconds)."""

    def make(name: str = "run") -> dict:
        return run_folders(tmp_path / name)

    return make


@pytest.fixture
def hub_offline(monkeypatch):
    """No Hugging Face hub: a model name that is not local fails at once instead of retrying
    for about 25 s. huggingface_hub reads HF_HUB_OFFLINE when imported, so the flag it already
    read is set as well."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
