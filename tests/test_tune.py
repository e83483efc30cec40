"""`python -m mmsa_iidaf.tune` with real Optuna: two worker processes on one SQLite study."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

optuna = pytest.importorskip("optuna", reason="Optuna is an optional extra: "
                                              "pip install -e '.[tune]'")

REPO = Path(__file__).resolve().parents[1]
SPACE = {"learning_rate": [0.0005, 0.001, 0.005], "hidden_dims": [[8, 4, 8], [16, 8, 16]],
         "dropouts": [[0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2]]}
# Every split a process builds is written to $SPLIT_LOG: the workers run with this
# sitecustomize on their path, a spy around MMSA's dataset class.
SPY = '''
import os
import MMSA.data_loader as loader

_init = loader.MMDataset.__init__

def _spy(self, args, mode="train"):
    with open(os.environ["SPLIT_LOG"], "a") as log:
        log.write(mode + "\\n")
    _init(self, args, mode)

loader.MMDataset.__init__ = _spy
'''


def tune(*args, env=None, wait=True):
    command = [sys.executable, "-m", "mmsa_iidaf.tune", *map(str, args)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, **(env or {})})
    return process.communicate(timeout=600) + (process.returncode,) if wait else process


def test_two_workers_share_one_study_and_never_build_the_test_split(tmp_path, tiny_mosi):
    (tmp_path / "spy").mkdir()
    (tmp_path / "spy" / "sitecustomize.py").write_text(SPY)
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    common = ["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--trials", 3, "--storage", storage,
              "--study", "shared", "--space", space, "--set", "early_stop=1"]
    env = {"PYTHONPATH": str(tmp_path / "spy"), "SPLIT_LOG": str(tmp_path / "splits.log"),
           "OMP_NUM_THREADS": "1"}
    workers = [tune(*common, "--best-config", tmp_path / f"best{i}.json", env=env, wait=False)
               for i in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]

    study = optuna.load_study(study_name="shared", storage=storage)
    assert [t.number for t in study.trials] == list(range(6))  # 3 + 3, none run twice
    finished = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(t.state in finished for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert set(Path(tmp_path / "splits.log").read_text().split()) == {"train", "valid"}

    # Each worker wrote the best trial of the study when it finished, as a config file that
    # run.py takes, with the values in their own types; the last to finish saw the final best.
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    written = [json.loads((tmp_path / f"best{i}.json").read_text())["lf_dnn"]["datasetParams"]
               ["mosi"] for i in range(2)]
    for values in written:
        assert values["early_stop"] == 1 and values["hidden_dims"] in SPACE["hidden_dims"]
        assert any({k: values[k] for k in SPACE} == t.user_attrs["values"] for t in complete)
    final = study.best_trial.user_attrs["values"]
    assert any({k: values[k] for k in SPACE} == final for values in written)
    values = written[1]
    run = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", "lf_dnn", "-d", "mosi",
                          "-f", str(tiny_mosi), "-c", str(tmp_path / "best1.json"), "-s", "1",
                          "--res-save-dir", str(tmp_path / "results"),
                          "--model-save-dir", str(tmp_path / "models"),
                          "--log-dir", str(tmp_path / "logs")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    config = json.loads(pd.read_csv(tmp_path / "results" / "lf_dnn-mosi-seeds.csv")["config"][0])
    assert config["hidden_dims"] == values["hidden_dims"]


def test_tune_user_errors_are_one_line_with_exit_2(tmp_path, tiny_mosi, capsys):
    from mmsa_iidaf.tune import main

    def error_of(*args) -> str:
        assert main([str(arg) for arg in args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err

    assert "unknown model 'nope'" in error_of("-m", "nope", "-d", "mosi", "--trials", 1)
    assert "--storage nosuchdb://host/db" in error_of(
        "-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--trials", 1, "--storage",
        "nosuchdb://host/db")
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": []}')
    assert "'learning_rate' must be a non-empty list" in error_of(
        "-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--trials", 1, "--space", bad)
    for text, message in (("[1, 2]", "holds a JSON list"),
                          ('{"d_paras": ["dropout"]}', "d_paras names dropout"),
                          ('{"learning_rate": {"low": 1, "high": 0}}',
                           "needs numbers low <= high")):
        bad.write_text(text)
        assert message in error_of("-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--trials", 1,
                                   "--space", bad)
    bad.write_text('{"learning_rate": [0.001]}')
    assert "its folder does not exist" in error_of(
        "-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--trials", 1, "--space", bad,
        "--best-config", tmp_path / "nowhere" / "best.json")


def test_a_study_scores_one_setup_only(tmp_path, tiny_mosi, capsys):
    """The same study with another fixed setting (or feature file) would reuse trials scored on
    another setup: refused in one line; the same setup resumes it."""
    from mmsa_iidaf.tune import main

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": [0.001]}))
    common = ["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--trials", 1, "--space", space,
              "--storage", f"sqlite:///{tmp_path / 'tune.db'}", "--study", "one",
              "--best-config", tmp_path / "best.json"]
    assert main([str(a) for a in common + ["--set", "early_stop=1"]]) == 0
    assert main([str(a) for a in common + ["--set", "early_stop=1"]]) == 0
    capsys.readouterr()
    assert main([str(a) for a in common + ["--set", "early_stop=2"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was made with another config" in err


def test_grid_trains_every_combination_once_unpruned(tmp_path, tiny_mosi):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": [0.0005, 0.005],
                                 "hidden_dims": [[8, 4, 8], [16, 8, 16]]}))
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    out, err, code = tune("-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--grid",
                          "--storage", storage, "--study", "grid", "--space", space,
                          "--set", "early_stop=1", "--best-config", tmp_path / "best.json",
                          env={"OMP_NUM_THREADS": "1"})
    assert code == 0, err[-2000:]
    study = optuna.load_study(study_name="grid", storage=storage)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    tried = sorted((t.user_attrs["values"]["learning_rate"], t.user_attrs["values"]["hidden_dims"])
                   for t in study.trials)
    assert tried == sorted((lr, dims) for lr in (0.0005, 0.005)
                           for dims in ([8, 4, 8], [16, 8, 16]))
    # The record of the selection: one table row per trial with its validation metrics.
    rows = [line for line in out.splitlines() if line.startswith("| ") and "trial" not in line]
    assert len(rows) == 4 and all("complete" in row for row in rows)
    assert "valid_Loss" in out


def test_grid_refuses_a_range(tmp_path, tiny_mosi, capsys):
    from mmsa_iidaf.tune import main

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"low": 1e-4, "high": 1e-2}}))
    assert main(["-m", "lf_dnn", "-d", "mosi", "-f", str(tiny_mosi), "--grid",
                 "--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--grid needs a list of values" in err



def _table_exists():
    import sqlalchemy.exc
    return sqlalchemy.exc.OperationalError("CREATE TABLE study_directions", {},
                                           Exception("table study_directions already exists"))


def _duplicate_row():
    import sqlalchemy.exc
    return sqlalchemy.exc.IntegrityError("INSERT INTO version_info", {}, Exception("UNIQUE"))


@pytest.mark.parametrize("lost_race", [_table_exists, _duplicate_row])
def test_a_worker_that_loses_the_schema_race_opens_the_storage_made_by_another(
        lost_race, tmp_path, monkeypatch):
    """Workers started together on a new database all create its tables; the losers get
    "already exists" or a duplicate row, and open the storage the winner made."""
    from mmsa_iidaf import tune as tune_module

    real_storage, calls = optuna.storages.RDBStorage, []

    def racing_storage(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise lost_race()
        return real_storage(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing_storage)
    monkeypatch.setattr(tune_module.time, "sleep", lambda seconds: None)
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    assert isinstance(tune_module.storage_for(url), real_storage) and len(calls) == 2
