"""Known answers for the benchmark scripts' bookkeeping (benchmarks/speed.py, scaling.py,
eval_path.py, frozen_encoder_cache.py): clocks, models and trainers are faked, so every figure
is computed here by hand and nothing depends on the machine's speed."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from support import import_benchmark


@pytest.fixture
def speed(monkeypatch):
    return import_benchmark(monkeypatch, "speed")


def _subject(speed, name, model=None, batch=16, **args):
    return speed.Subject(name, {"device": torch.device("cpu"), **args}, model, None,
                         [{"labels": {"M": torch.zeros(batch)}}], {1: "b1", 32: "b32"},
                         "text", 2_000_000, 1_000_000)


def test_ratios_divide_every_figure_by_misas(speed):
    results = {"misa": {"latency_ms_b1": 2.0, "latency_ms_b32": 10.0, "train_samples_per_s": 40.0,
                        "peak_rss_mb": 500.0, "peak_gpu_mb": 100.0},
               "iidaf": {"latency_ms_b1": 3.0, "latency_ms_b32": 25.0, "train_samples_per_s": 10.0,
                         "peak_rss_mb": 2000.0, "peak_gpu_mb": 50.0}}
    speed.add_ratios(results)
    assert results["iidaf"]["ratio_to_misa"] == {
        "latency_ms_b1": 1.5, "latency_ms_b32": 2.5, "train_samples_per_s": 0.25,
        "peak_rss_mb": 4.0, "peak_gpu_mb": 0.5}
    assert set(results["misa"]["ratio_to_misa"].values()) == {1.0}


def test_measure_interleaves_the_models_and_takes_median_and_p90(speed, monkeypatch, tmp_path):
    """Two models, 5 latency rounds, 3 training rounds. The warm-up pass returns 1000 ms, which
    must not reach the figures; the fakes check every forward is at batch 1 or 32."""
    calls = []
    latency = {("iidaf", 1): [4, 1, 3, 100, 2], ("iidaf", 32): [40, 10, 30, 1000, 20],
               ("misa", 1): [2, 2, 2, 2, 2], ("misa", 32): [10, 10, 10, 10, 10]}
    warmed = set()
    throughput = {"iidaf": [5.0, 50.0, 7.0], "misa": [14.0, 14.0, 14.0]}

    def forward_ms(subject, size):
        assert size in (1, 32), size
        calls.append(("forward", subject.name, size))
        if (subject.name, size) not in warmed:
            warmed.add((subject.name, size))
            return 1000.0
        return float(latency[subject.name, size].pop(0))

    def train(subject, warmup, steps):
        assert (warmup, steps) == (1, 8)
        calls.append(("train", subject.name))
        return throughput[subject.name].pop(0)

    monkeypatch.setattr(speed, "data_file", lambda directory, shapes: tmp_path / "f.pkl")
    monkeypatch.setattr(speed, "build_subject", lambda spec, *rest: _subject(speed, spec[0]))
    monkeypatch.setattr(speed, "forward_ms", forward_ms)
    monkeypatch.setattr(speed, "train_samples_per_s", train)
    memory = {"iidaf": 900.0, "misa": 300.0}
    monkeypatch.setattr(speed, "peak_memory", lambda spec, *rest: {
        "peak_rss_mb": memory[spec[0]], "import_rss_mb": 100.0})
    options = SimpleNamespace(device="cpu", overrides=[], shapes="compact", text="encoder",
                              vocabulary_ids=None, vocabulary=None)
    setting = speed.Setting(latency_rounds=5, train_rounds=3, warmup_steps=1, timed_steps=8,
                            memory_steps=2)
    table = speed.measure(speed.parse_models("iidaf,misa"), options, setting)
    one_round = [("forward", m, s) for m in ("iidaf", "misa") for s in (1, 32)]
    # Warm-up, then round by round every model (interleaved), then the training rounds.
    assert calls == one_round * 6 + [("train", "iidaf"), ("train", "misa")] * 3
    assert {"device", "threads", "models"} <= set(table) and table["device"].startswith("cpu")
    iidaf = table["models"]["iidaf"]
    # Sorted [1, 2, 3, 4, 100]: median 3, p90 at index 3.6 -> 4 + 0.6 * 96 (linear).
    assert iidaf["latency_ms_b1"] == 3.0 and iidaf["latency_ms_b1_p90"] == pytest.approx(61.6)
    assert iidaf["latency_ms_b32"] == 30.0 and iidaf["latency_ms_b32_p90"] == pytest.approx(616)
    assert iidaf["train_samples_per_s"] == 7.0  # the median of 5, 50, 7
    assert iidaf["peak_rss_mb"] == 900.0 and iidaf["batch_size"] == 16
    assert iidaf["ratio_to_misa"] == pytest.approx({
        "latency_ms_b1": 1.5, "latency_ms_b32": 3.0, "train_samples_per_s": 0.5,
        "peak_rss_mb": 3.0})


def test_forward_ms_is_one_eval_pass_in_inference_mode_at_the_asked_batch(speed, monkeypatch):
    seen = {}

    class Model(torch.nn.Module):
        def forward(self, *positional, **keyword):
            seen.update(training=self.training, inference=torch.is_inference_mode_enabled(),
                        inputs=(positional, keyword), precision=entered[:])

    entered = []

    @contextlib.contextmanager
    def precision():
        entered.append(True)
        yield

    subject = _subject(speed, "m", Model().train())
    subject.trainer = SimpleNamespace(precision=precision)
    subject.latency_inputs = {1: (("one",), {}), 32: (("many",), {"k": 2})}
    ticks = iter([10.0, 10.25])
    monkeypatch.setattr(speed, "_now", lambda device: next(ticks))
    assert speed.forward_ms(subject, 32) == 250.0
    assert seen == {"training": False, "inference": True, "inputs": (("many",), {"k": 2}),
                    "precision": [True]}


def test_memory_child_counts_the_peak_from_after_its_imports(speed, monkeypatch):
    """Order: reset the peak (clear_refs), read VmRSS (the imports' resident set), then build,
    train and run the model, then read the peak VmHWM."""
    events = []
    monkeypatch.setattr(speed.torch, "set_num_threads", lambda threads: None)
    monkeypatch.setattr(speed, "_reset_peak_rss", lambda: events.append("reset"))
    monkeypatch.setattr(speed, "_status_mb", lambda field: events.append(field) or
                        {"VmRSS": 400.0, "VmHWM": 900.0}[field])
    monkeypatch.setattr(speed, "build_subject", lambda *a: events.append("build") or
                        _subject(speed, "m", update_epochs=1))
    monkeypatch.setattr(speed, "train_samples_per_s",
                        lambda s, w, n: events.append(("train", w, n)))
    monkeypatch.setattr(speed, "forward_ms", lambda s, size: events.append(("forward", size)))
    answer = SimpleNamespace(put=lambda figures: events.append(figures))
    request = {"model": ("m", "m", {}), "feature_file": "f.pkl", "text": "encoder",
               "device": "cpu", "work_dir": ".", "threads": 1, "steps": 2, "overrides": [],
               "vocabulary": None}
    speed._memory_child(request, answer)
    assert events == ["reset", "VmRSS", "build", ("train", 1, 2), ("forward", 32), "VmHWM",
                      {"peak_rss_mb": 900.0, "import_rss_mb": 400.0}]


def test_markdown_puts_each_ratio_after_its_own_figure(speed):
    row = {"text_input": "t", "parameters": 2_000_000, "parameters_without_encoder": 1_000_000,
           "batch_size": 16, "latency_ms_b1": 3.0, "latency_ms_b1_p90": 61.6,
           "latency_ms_b32": 30.0, "latency_ms_b32_p90": 616.0, "train_samples_per_s": 7.0,
           "peak_rss_mb": 900.0, "import_rss_mb": 100.0,
           "ratio_to_misa": {"latency_ms_b1": 1.5, "latency_ms_b32": 2.5,
                             "train_samples_per_s": 0.5, "peak_rss_mb": 4.0}}
    table = {"device": "cpu", "threads": 1, "torch": "x", "shapes": "compact", "setting": {},
             "models": {"iidaf": row}}
    lines = speed.markdown(table, "cmd").splitlines()
    assert ("| `iidaf` | t | 2.00, 1.00 | 3.0 (61.6) (1.50×) | 30.0 (616.0) (2.50×) | "
            "7.0 (16) (0.50×) | 900 (4.00×) |") in lines


def test_scaling_exponent_is_the_log_log_slope(monkeypatch):
    import_benchmark(monkeypatch, "speed")
    scaling = import_benchmark(monkeypatch, "scaling")
    xs = [1.0, 2.0, 4.0, 8.0]
    assert scaling.exponent(xs, [3 * x ** 1.5 for x in xs]) == pytest.approx(1.5)


def test_scaling_epoch_is_timed_after_the_build_and_its_peak_after_the_imports(monkeypatch):
    """Clock ticks 0, 1, 2, 3: data loaded at 1, training begins at 2, validation at 3."""
    speed = import_benchmark(monkeypatch, "speed")
    scaling = import_benchmark(monkeypatch, "scaling")
    events = []
    ticks = iter([0.0, 1.0, 2.0, 3.0])
    monkeypatch.setattr(scaling.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(speed.torch, "set_num_threads", lambda threads: None)
    monkeypatch.setattr(speed, "_reset_peak_rss", lambda: events.append("reset"))
    monkeypatch.setattr(speed, "_status_mb", lambda field: events.append(field) or 700.0)
    monkeypatch.setattr(speed, "run_args", lambda *a, **k: events.append("args") or
                        ({"device": torch.device("cpu")}, ""))

    class Trainer:
        def do_train(self, model, loaders):
            for _ in loaders["valid"]:
                pass

    registry = scaling.registry
    monkeypatch.setattr(registry, "build_dataloaders", lambda args, seed, splits: {"train": []})
    monkeypatch.setattr(registry, "build_model", lambda args: torch.nn.Linear(1, 1))
    monkeypatch.setattr(registry, "build_trainer", lambda args: Trainer())
    answer = SimpleNamespace(put=lambda point: events.append(point))
    request = {"model": ("iidaf", "iidaf", {}), "feature_file": "f.pkl", "work_dir": ".",
               "threads": 1, "overrides": [], "device": "cpu"}
    scaling._epoch_child(request, answer)
    assert events == ["reset", "args", "VmHWM",
                      {"epoch_s": 1.0, "load_s": 1.0, "peak_rss_mb": 700.0}]


def test_eval_path_drops_the_warm_up_round_and_puts_the_old_path_first(monkeypatch, capsys):
    speed = import_benchmark(monkeypatch, "speed")
    eval_path = import_benchmark(monkeypatch, "eval_path")

    class Model:
        before = False

        def eval(self):
            return self

        def __call__(self, *a, **k):
            return {"M": torch.zeros(2), "latent_recovered": self.before}

    monkeypatch.setattr(speed, "data_file", lambda directory, shapes: Path("f.pkl"))

    def build(spec, *rest):
        subject = _subject(speed, spec[0], Model())
        subject.latency_inputs = {1: ((), {}), 32: ((), {})}
        return subject

    monkeypatch.setattr(speed, "build_subject", build)
    monkeypatch.setattr(eval_path, "run_inverse_and_decoder_in_eval",
                        lambda subject: setattr(subject.model, "before", True))
    # Per (path, batch): the warm-up round's 1000 ms, then 3 timed rounds.
    times = {(True, 1): [1000, 10, 30, 20], (False, 1): [1000, 5, 15, 10],
             (True, 32): [1000, 100, 300, 200], (False, 32): [1000, 50, 150, 100]}
    monkeypatch.setattr(speed, "forward_ms",
                        lambda subject, size: float(times[subject.model.before, size].pop(0)))
    assert eval_path.main(["--models", "iidaf", "--rounds", "3", "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert rows == ["| `iidaf` | 20.0 / 10.0 (-50%) | 200.0 / 100.0 (-50%) |"]


def test_frozen_encoder_cache_reports_seconds_per_epoch_and_the_speed_up(monkeypatch, tmp_path,
                                                                          capsys):
    cache = import_benchmark(monkeypatch, "frozen_encoder_cache")
    # epoch_seconds: loading ends at 1.5; 4 epochs from 10 to 18 -> 2 s each.
    ticks = iter([0.0, 1.5, 10.0, 18.0])
    monkeypatch.setattr(cache.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(cache.runs, "prepare_args", lambda args: None)
    monkeypatch.setattr(cache.registry, "build_dataloaders", lambda args: {"train": []})
    monkeypatch.setattr(cache.registry, "build_model",
                        lambda args: SimpleNamespace(Model=None))

    class Trainer:
        def __init__(self, args):
            pass

        def _optimizers(self, model):
            return None, None

        def _train_epoch(self, *a):
            pass

    monkeypatch.setattr(cache, "IIDAFTrainer", Trainer)
    assert cache.epoch_seconds(tmp_path / "f.pkl", False, 4) == (1.5, 2.0)
    # main: off 6 s per epoch, on 2 s -> a speed-up of 3.0x (not 0.3x).
    monkeypatch.setattr(cache, "epoch_seconds",
                        lambda feature, on, epochs: (3.0, 2.0) if on else (1.0, 6.0))
    monkeypatch.setattr(cache.encoder_cache, "clear", lambda: None)
    monkeypatch.setattr(cache.encoder_cache, "cache_dir", lambda: tmp_path)  # deletes nothing
    monkeypatch.setattr(sys, "argv", ["frozen_encoder_cache.py", "--feature", "f.pkl"])
    cache.main()
    assert "speed-up per epoch: 3.0x" in capsys.readouterr().out
