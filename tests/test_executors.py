"""The comparison grid on a real local Ray: the same numbers as the local executor, workers that
need no shared folder, and a dying worker that costs its own run only."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mmsa_iidaf.experiments import compare as comparison
from mmsa_iidaf.experiments import executors
from support import run_cli_in_process, run_folders

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")

REPO = Path(__file__).resolve().parents[1]
# MMSA's two quickest baselines, narrowed: these tests are about where runs train. In
# datasetParams, which MMSA reads after commonParams (its own mosi section sets early_stop 8).
FAST = {model: {"datasetParams": {"mosi": {"early_stop": 1, "hidden_dims": [8, 4, 8],
                                           "text_out": 8, "post_fusion_dim": 8}}}
        for model in ("lf_dnn", "tfn")}


@pytest.fixture(scope="module")
def ray_address():
    """A real local Ray with two CPUs, as a user's `ray start` would give, but with workers at
    normal priority: Ray's default niceness 15 starves them (minutes to import torch) on a
    2-core machine where anything else runs."""
    niceness = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if niceness is None:
        os.environ.pop("RAY_worker_niceness")
    else:
        os.environ["RAY_worker_niceness"] = niceness


@pytest.fixture
def fast_config(tmp_path) -> Path:
    import json

    path = tmp_path / "fast.json"
    path.write_text(json.dumps(FAST))
    return path


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def folder_flags(root: Path) -> list:
    return ["--res-save-dir", root / "results", "--model-save-dir", root / "models",
            "--log-dir", root / "logs"]


def test_ray_grid_gives_the_local_numbers(tmp_path, fast_config, ray_address, monkeypatch,
                                         capsys):
    grid = ["-m", "lf_dnn", "-m", "tfn", "-d", "mosi", "--demo", "-c", fast_config,
            "-s", "1", "-s", "2", "-v", "0"]
    # The local grid in this process at one thread, as a Ray worker with one CPU runs.
    local = run_cli_in_process([*grid, *folder_flags(tmp_path / "local")], monkeypatch, capsys,
                               threads=1)
    assert local.returncode == 0, local.stderr[-2000:]
    on_ray = run_cli(*grid, *folder_flags(tmp_path / "ray"), "--executor", "ray",
                     "--ray-address", ray_address, "--cpus-per-run", "1")
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]

    tables = {name: pd.read_csv(tmp_path / name / "results" / "compare-mosi.csv")
              for name in ("local", "ray")}
    metrics = [c for c in tables["local"] if c.endswith(("_mean", "_std", "_p"))]
    assert len(metrics) > 20 and tables["ray"]["n_seeds"].tolist() == [2, 2]
    pd.testing.assert_frame_equal(tables["local"][metrics], tables["ray"][metrics])
    # The driver wrote what the workers made: rows with the threads they ran with, the
    # predictions, the checkpoints under its own model folder, the logs.
    rows = pd.read_csv(tmp_path / "ray" / "results" / "tfn-mosi-seeds.csv")
    assert rows["seed"].tolist() != [] and set(rows["cpu_threads"]) == {1}
    assert all(Path(p).is_file() and str(tmp_path / "ray" / "models") in p
               for p in rows["checkpoint"])
    assert len(list((tmp_path / "ray" / "results" / "predictions").glob("*.npz"))) == 4
    assert "TEST-(tfn)" in (tmp_path / "ray" / "logs" / "tfn-mosi-ray.log").read_text()
    # Rerunning the command skips all four runs.
    again = run_cli_in_process([*grid, *folder_flags(tmp_path / "ray"), "--executor", "ray",
                                "--ray-address", ray_address], monkeypatch, capsys)
    assert again.returncode == 0 and "4 of 4 (model, seed) runs already" in again.stdout


def test_a_dying_worker_costs_its_own_run_only(tmp_path, fast_config, tiny_mosi, ray_address,
                                               monkeypatch):
    deaths = tmp_path / "deaths"
    deaths.mkdir()

    def dies(request):
        # lf_dnn's worker dies on its first try only (Ray retries it); tfn's on every try.
        marker = deaths / f"{request.name}-{len(list(deaths.glob(request.name + '*')))}"
        marker.touch()
        if request.name == "tfn" or len(list(deaths.glob("lf_dnn*"))) == 1:
            os._exit(1)
        return executors.train_one_run(request)

    monkeypatch.setattr(executors, "train_one_run", dies)
    with pytest.raises(comparison.RunsFailed, match=r"1 run\(s\) failed.*tfn seed 1"):
        comparison.compare(["lf_dnn", "tfn"], "mosi", [1], config_file=str(fast_config),
                           custom_feature=str(tiny_mosi), progress=False,
                           executor=executors.RayExecutor(cpus_per_run=1),
                           **run_folders(tmp_path / "grid"))
    assert len(list(deaths.glob("lf_dnn*"))) == 2 and len(list(deaths.glob("tfn*"))) == 2
    table = pd.read_csv(tmp_path / "grid" / "results" / "compare-mosi.csv")
    assert table.set_index("model")["n_seeds"].to_dict() == {"lf_dnn": 1, "tfn": 0}


def test_a_worker_without_the_feature_file_gets_it_through_the_object_store(tmp_path,
                                                                          ray_address):
    content = b"feature bytes"
    source = tmp_path / "features.pkl"
    source.write_bytes(content)
    shipped = executors.ShippedFile(str(source), executors.runs.file_sha256(source),
                                    ray.put(content))
    assert executors._local_copy(shipped, tmp_path / "scratch") == str(source)
    source.unlink()  # another machine: nothing at the driver's path
    copy = Path(executors._local_copy(shipped, tmp_path / "scratch"))
    assert copy != source and copy.read_bytes() == content


def test_ray_flags_are_checked_before_any_training(tmp_path, tiny_mosi, monkeypatch, capsys):
    alone = run_cli_in_process(["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--executor",
                                "ray"], monkeypatch, capsys)
    assert alone.returncode == 2 and "--executor ray spreads a comparison" in alone.stderr
    bad = run_cli_in_process(["-m", "lf_dnn", "-m", "tfn", "-d", "mosi", "-f", tiny_mosi,
                              "--executor", "ray", "--cpus-per-run", "0",
                              *folder_flags(tmp_path)], monkeypatch, capsys)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--cpus-per-run 0" in bad.stderr


def test_an_address_where_nothing_answers_is_one_line_not_minutes_of_retries(
        tmp_path, fast_config, monkeypatch, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = run_cli_in_process(["-m", "lf_dnn", "-m", "tfn", "-d", "mosi", "--demo", "-c",
                                  fast_config, "-s", "1", "-v", "0",
                                  *folder_flags(tmp_path / "ray"), "--executor", "ray",
                                  "--ray-address", f"127.0.0.1:{port}"], monkeypatch, capsys)
    lines = [line for line in refused.stderr.splitlines() if line.strip()
             and not line.startswith("demo:")]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert f"--ray-address 127.0.0.1:{port}: nothing answers there" in lines[0]
