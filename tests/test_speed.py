"""benchmarks/speed.py: the quick setting runs and writes the JSON the issue names, with ratios to
MISA; a bad model name is one line and status 2. No test asserts a time."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

from support import SMALL_IIDAF, import_benchmark

from mmsa_iidaf.data.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed.py"
FIGURES = ("latency_ms_b1", "latency_ms_b32", "train_samples_per_s", "peak_rss_mb")


def _speed(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SPEED), *arguments], cwd=ROOT, text=True,
                          capture_output=True, timeout=600)


def test_quick_json_has_every_figure_and_the_ratios_to_misa(tmp_path):
    out = tmp_path / "speed.json"
    small = [f"--set=iidaf.{key}={json.dumps(value)}" for key, value in SMALL_IIDAF.items()]
    vocabulary = write_dataset(tmp_path / "words.pkl", preset="mosi", n_train=8, n_valid=2,
                               n_test=2, seed=0)
    done = _speed("--models", "iidaf,iidaf[text_vocabulary=train],misa", "--quick", "--shapes",
                  "compact", "--threads", "1", "--vocabulary", str(vocabulary), "--json", str(out),
                  *small)
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads(out.read_text())
    assert table["device"].startswith("cpu") and table["threads"] == 1
    assert set(table["models"]) == {"iidaf", "iidaf[text_vocabulary=train]", "misa"}
    for name, row in table["models"].items():
        for key in FIGURES:
            assert row[key] > 0, (name, key)
        assert row["latency_ms_b1_p90"] >= row["latency_ms_b1"]
        assert row["peak_rss_mb"] >= row["import_rss_mb"]
        assert "frozen" in row["text_input"]  # both read text through the same stand-in
    misa = table["models"]["misa"]
    assert all(value == 1.0 for value in misa["ratio_to_misa"].values())
    iidaf = table["models"]["iidaf"]
    assert iidaf["ratio_to_misa"]["latency_ms_b32"] == (iidaf["latency_ms_b32"]
                                                        / misa["latency_ms_b32"])
    assert iidaf["parameters_without_encoder"] < iidaf["parameters"]
    # The trimmed row keeps the eight training clips' tokens only: the same model, a smaller
    # embedding.
    trimmed = table["models"]["iidaf[text_vocabulary=train]"]
    assert trimmed["parameters_without_encoder"] == iidaf["parameters_without_encoder"]
    assert trimmed["parameters"] < iidaf["parameters"] - 10_000_000
    assert table["vocabulary"] == str(vocabulary)
    assert "| `iidaf` |" in done.stdout and "×)" in done.stdout


def _speed_in_process(monkeypatch, capsys, *arguments: str) -> tuple[int, str]:
    """speed.py's main() in this process (saves a Python start-up): (status, stderr)."""
    speed = import_benchmark(monkeypatch, "speed")
    return speed.main(list(arguments)), capsys.readouterr().err


def test_unknown_model_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    done = _speed("--models", "iidaf,nosuch", "--quick")  # the real process: its exit status
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "nosuch" in done.stderr
    status, stderr = _speed_in_process(monkeypatch, capsys, "--models", "iidaf", "--quick",
                                       "--vocabulary", "no/such.pkl")
    assert status == 2
    assert stderr.strip().count("\n") == 0 and "no/such.pkl" in stderr
    without_text = tmp_path / "no_text.pkl"
    without_text.write_bytes(pickle.dumps({"train": {"audio": [0.0]}}))
    status, stderr = _speed_in_process(monkeypatch, capsys, "--models", "iidaf", "--quick",
                                       "--vocabulary", str(without_text))
    assert status == 2
    assert stderr.strip().count("\n") == 0 and "KeyError: 'text_bert'" in stderr


def test_scaling_quick_writes_its_table_plot_and_growth(tmp_path):
    small = [f"--set=iidaf.{key}={json.dumps(value)}" for key, value in SMALL_IIDAF.items()]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--quick",
                           "--threads", "1", "--out", str(tmp_path), *small], cwd=ROOT,
                          text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "scaling.json").read_text())
    points = results["models"]["iidaf"]["points"]
    assert [(p["sweep"], p["n_train"], p["length"]) for p in points] == [
        ("data size", 64, 50), ("data size", 128, 50),
        ("sequence length", 64, 8), ("sequence length", 64, 16)]
    assert all(p["epoch_s"] > 0 and p["peak_rss_mb"] > 0 for p in points)
    assert "N^" in (tmp_path / "scaling.md").read_text()
    assert (tmp_path / "scaling.png").stat().st_size > 10_000


def test_model_specs_take_list_values(monkeypatch):
    speed = import_benchmark(monkeypatch, "speed")
    specs = speed.parse_models("iidaf, iidaf[d_model=64;enc_layers=[1,1,1];text_layers=5],misa")
    assert [(name, settings) for _, name, settings in specs] == [
        ("iidaf", {}), ("iidaf", {"d_model": 64, "enc_layers": [1, 1, 1], "text_layers": 5}),
        ("misa", {})]
    assert specs[1][0] == "iidaf[d_model=64;enc_layers=[1,1,1];text_layers=5]"


def test_every_model_is_timed_on_the_same_clips(monkeypatch, tmp_path):
    """MMSA's loaders shuffle and building a model draws random numbers: the batches are drawn
    before, so IIDAF and MISA (different sizes, different draws) get the same clips; the
    latency batches hold 32 clips whatever the configured batch size (MISA's 16 here)."""
    import torch

    speed = import_benchmark(monkeypatch, "speed")
    feature_file = speed.data_file(tmp_path, "compact")
    small = [(f"iidaf.{key}", value) for key, value in SMALL_IIDAF.items()]
    subjects = [speed.build_subject(model, feature_file, "encoder", torch.device("cpu"),
                                    tmp_path, small)
                for model in speed.parse_models("iidaf,misa")]
    first, second = ([batch["id"] for batch in subject.train_batches] for subject in subjects)
    assert first == second
    for size in (1, 32):  # the latency batches: the same text_bert, first of both models' inputs
        texts = [subject.latency_inputs[size][0][0] for subject in subjects]
        assert [len(text) for text in texts] == [size, size]
        assert torch.equal(texts[0], texts[1][..., :texts[0].shape[-1]])


def test_eval_path_benchmark_checks_the_predictions_and_times_both_paths(monkeypatch, capsys):
    import_benchmark(monkeypatch, "speed")
    eval_path = import_benchmark(monkeypatch, "eval_path")
    assert eval_path.main(["--models", "iidaf", "--rounds", "1", "--shapes", "compact"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `iidaf`")]
    assert len(row) == 1 and row[0].count(" / ") == 2


def test_throughput_counts_the_samples_of_the_batches_in_the_window(monkeypatch):
    """Batches of 48, 48 and 32 (a last, partial one): each counts as its own size. The clock
    is a counter, so nothing here depends on time."""
    import torch

    speed = import_benchmark(monkeypatch, "speed")
    ticks = iter(range(1000))
    monkeypatch.setattr(speed, "_now", lambda device: float(next(ticks)))

    class OneEpoch:
        def do_train(self, model, loaders):
            for _ in loaders["train"]:
                pass
            for _ in loaders["valid"]:
                pass

    batches = [{"labels": {"M": torch.zeros(size)}} for size in (48, 48, 32)]
    subject = speed.Subject("m", {"device": torch.device("cpu")}, None, OneEpoch(), batches, {},
                            "", 0, 0)
    # Handed at ticks 0..5 (sizes 48, 48, 32, 48, 48, 32); validation reached at tick 6.
    assert speed.train_samples_per_s(subject, 1, 5) == (48 + 32 + 48 + 48 + 32) / (6 - 1)


def test_memory_pass_reaches_an_optimiser_step_of_accumulating_trainers(monkeypatch, tmp_path):
    """MulT steps its optimiser every `update_epochs` (8) batches: the memory pass trains at
    least that many after its warm-up batch, so the optimiser's state is in the peak."""
    speed = import_benchmark(monkeypatch, "speed")
    trained = []
    monkeypatch.setattr(speed, "_reset_peak_rss", lambda: None)
    monkeypatch.setattr(speed.torch, "set_num_threads", lambda threads: None)  # the child's
    monkeypatch.setattr(speed, "train_samples_per_s",
                        lambda subject, warmup, steps: trained.append((warmup, steps)))
    monkeypatch.setattr(speed, "forward_ms", lambda subject, size: 0.0)

    class Answer:
        def put(self, figures):
            self.figures = figures

    feature_file = speed.data_file(tmp_path, "compact")
    for model, steps in (("mult", 8), ("tfn", 2)):
        request = {"model": (model, model, {}), "feature_file": str(feature_file),
                   "text": "features", "device": "cpu", "work_dir": str(tmp_path), "threads": 1,
                   "steps": 2, "overrides": [], "vocabulary": None}
        answer = Answer()
        speed._memory_child(request, answer)
        assert trained.pop() == (1, steps) and answer.figures["peak_rss_mb"] > 0
