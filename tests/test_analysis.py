"""`python -m mmsa_iidaf.analysis`: the paper's Fig. 4, Fig. 5, Table 8 and the disentanglement
numbers from a checkpoint of a tiny iidaf run, the disentanglement numbers of a peer's (mgrl);
the probes on planted features; mismatched checkpoints and models without shared and specific
features refused with one line and status 2.
"""
from __future__ import annotations

import json

import MMSA
import numpy as np
import pandas as pd
import pytest
import torch

from mmsa_iidaf import registry
from mmsa_iidaf.analysis import find_seed_row, load_run
from mmsa_iidaf.analysis.__main__ import main
from mmsa_iidaf.analysis.interpret import collect, label_r2, modality_probe
from support import SMALL_IIDAF, close_mmsa_handlers, run_folders

SMALL = {**SMALL_IIDAF, "max_epochs": 2, "early_stop": 2}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tiny_mosi, tmp_path_factory) -> dict:
    """One seed of iidaf, mgrl and lf_dnn on the tiny file, with their folders."""
    root = tmp_path_factory.mktemp("analysed")
    dirs = run_folders(root)
    try:
        MMSA.MMSA_run("iidaf", "mosi", config=SMALL, custom_feature=str(tiny_mosi), seeds=[1],
                      **dirs)
        MMSA.MMSA_run("lf_dnn", "mosi", config={"max_epochs": 1, "early_stop": 1},
                      custom_feature=str(tiny_mosi), seeds=[1], **dirs)
        peer = {k: v for k, v in SMALL.items() if k not in ("mic_proj_dim", "disc_hidden")}
        MMSA.MMSA_run("mgrl", "mosi", config=peer, custom_feature=str(tiny_mosi), seeds=[1],
                      **dirs)
    finally:
        close_mmsa_handlers()
    return {"root": root, "results": dirs["res_save_dir"],
            "iidaf": dirs["model_save_dir"] / "iidaf-mosi-seed1.pth",
            "lf_dnn": dirs["model_save_dir"] / "lf_dnn-mosi-seed1.pth",
            "mgrl": dirs["model_save_dir"] / "mgrl-mosi-seed1.pth"}


@pytest.fixture(scope="module")
def analysed(runs, tiny_mosi) -> dict:
    out = runs["root"] / "analysis"
    argv = [runs["iidaf"], "-d", "mosi", "-f", tiny_mosi, "--out", out,
            "--res-save-dir", runs["results"]]
    status = main(argv)
    return {"status": status, "out": out, "argv": argv}


def refused(argv, capsys) -> str:
    """Run the CLI, expect status 2 and exactly one line on stderr; return that line."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_the_cli_writes_every_output(analysed):
    assert analysed["status"] == 0
    out = analysed["out"]
    for name in ("tsne.png", "gates.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    importance = pd.read_csv(out / "importance.csv")
    assert importance["prediction"].tolist() == ["full", "shared_only", "specific_only"]
    assert {"MAE", "Corr", "Has0_acc_2", "Mult_acc_7", "MAE_drop", "Corr_drop"} <= set(importance)
    assert (importance.loc[0, [c for c in importance if c.endswith("_drop")]] == 0).all()
    table = pd.read_csv(out / "disentanglement.csv")
    assert list(table.columns) == ["measure", "modality", "value", "reference", "description"]
    measures = table.groupby("measure")["modality"].apply(list).to_dict()
    assert measures["hsic_specific_shared"] == ["t", "a", "v"]
    assert measures["cmd_shared"] == ["t-a", "t-v", "a-v"]
    probes = table[table["measure"].str.startswith("probe_modality_from_")]
    assert set(probes["measure"]) == {"probe_modality_from_shared", "probe_modality_from_specific"}
    assert np.allclose(probes["reference"], 1 / 3)
    assert measures["label_r2_specific_beyond_shared"] == ["t", "a", "v", "tav"]
    assert np.isfinite(table["value"]).all()

    report = (out / "report.md").read_text()
    for name in ("tsne.png", "gates.png", "importance.csv", "disentanglement.csv"):
        assert f"]({name})" in report
    assert "python -m mmsa_iidaf.analysis " + str(analysed["argv"][0]) in report


def test_the_measures_are_those_of_the_per_seed_diagnostics(analysed, runs):
    """HSIC and CMD are computed from the collected features, the same way for every model;
    for IIDAF they equal what its trainer's diagnostics measured during the run."""
    row = find_seed_row(runs["iidaf"], res_save_dir=runs["results"])
    run = load_run(json.loads(row["config"]), runs["iidaf"])
    from mmsa_iidaf.analysis.checkpoint import in_order

    diagnostics = run.trainer.diagnose(run.model, in_order(run.loaders["test"]))
    table = pd.read_csv(analysed["out"] / "disentanglement.csv")
    hsic_rows = table[table["measure"] == "hsic_specific_shared"].set_index("modality")["value"]
    for m, value in diagnostics["hsic_shared_specific"].items():
        assert hsic_rows[m] == pytest.approx(value, rel=1e-4, abs=1e-7)
    cmd_rows = table[table["measure"] == "cmd_shared"].set_index("modality")["value"]
    for pair, value in diagnostics["cmd_shared_standardised"].items():
        assert cmd_rows[pair] == pytest.approx(value, rel=1e-4)


def test_a_peer_gets_tsne_and_the_disentanglement_numbers(runs, tiny_mosi, tmp_path):
    out = tmp_path / "mgrl"
    assert main([runs["mgrl"], "-d", "mosi", "-f", tiny_mosi, "--out", out,
                 "--res-save-dir", runs["results"]]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["disentanglement.csv", "report.md",
                                                      "tsne.png"]
    table = pd.read_csv(out / "disentanglement.csv")
    assert set(table["measure"]) == {
        "hsic_specific_shared", "cmd_shared", "probe_modality_from_shared",
        "probe_modality_from_specific", "label_r2_shared", "label_r2_specific_and_shared",
        "label_r2_specific_beyond_shared"}
    assert np.isfinite(table["value"]).all()
    report = (out / "report.md").read_text()
    assert "](tsne.png)" in report and "gates.png" not in report
    assert "Fig. 5 and Table 8 do not apply" in report


def test_importance_rows_are_the_model_outputs(analysed, runs):
    """Recomputed from the model: each row's metrics are those of M, M_shared and M_specific,
    and the full prediction is eq. 22's γ g(s) + (1 − γ) g(p)."""
    row = find_seed_row(runs["iidaf"], res_save_dir=runs["results"])
    run = load_run(json.loads(row["config"]), runs["iidaf"])
    predicted = collect(run)
    gamma = predicted["gamma"]
    fused = gamma * predicted["M_shared"] + (1 - gamma) * predicted["M_specific"]
    assert np.allclose(fused, predicted["M"], atol=1e-5)

    metrics = registry.metrics_for(run.args)
    labels = torch.from_numpy(predicted["labels"])
    importance = pd.read_csv(analysed["out"] / "importance.csv").set_index("prediction")
    for name, key in (("full", "M"), ("shared_only", "M_shared"), ("specific_only", "M_specific")):
        expected = metrics(torch.from_numpy(predicted[key]), labels)
        for metric, value in expected.items():
            assert importance.loc[name, metric] == pytest.approx(value, abs=1e-9), (name, metric)
    # The clean test MAE of the run itself: the checkpoint and data are the run's.
    assert importance.loc["full", "MAE"] == pytest.approx(row["MAE"], abs=1e-4)
    mae = importance["MAE"]
    assert importance.loc["shared_only", "MAE_drop"] == pytest.approx(
        (mae["shared_only"] - mae["full"]) / mae["full"])


def test_the_probe_tells_planted_modalities_and_not_identical_ones():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 8))
    separable = {m: base + shift for m, shift in zip("tav", (-4.0, 0.0, 4.0))}
    accuracy, chance = modality_probe(separable)
    assert chance == pytest.approx(1 / 3)
    assert accuracy > 0.95
    identical = {m: base for m in "tav"}
    accuracy, _ = modality_probe(identical)
    assert abs(accuracy - 1 / 3) < 0.1


def test_label_r2_sees_what_the_specific_part_adds():
    rng = np.random.default_rng(1)
    shared, specific = rng.normal(size=(80, 4)), rng.normal(size=(80, 4))
    labels = specific[:, 0] + 0.05 * rng.normal(size=80)
    both = label_r2(np.concatenate([specific, shared], axis=1), labels)
    assert both - label_r2(shared, labels) > 0.8


def test_the_seeds_file_or_a_config_json_gives_the_config(runs, tiny_mosi, tmp_path):
    seeds = runs["results"] / "iidaf-mosi-seeds.csv"
    assert main([runs["iidaf"], "--seeds-csv", seeds, "--out", tmp_path / "a"]) == 0
    config = tmp_path / "config.json"
    config.write_text(pd.read_csv(seeds)["config"].iloc[-1])
    assert main([runs["iidaf"], "--config-json", config, "--out", tmp_path / "b"]) == 0
    assert (tmp_path / "b" / "report.md").is_file()


def test_a_checkpoint_that_does_not_fit_its_config_exits_2(runs, tmp_path, capsys):
    config = json.loads(pd.read_csv(runs["results"] / "iidaf-mosi-seeds.csv")["config"].iloc[-1])
    config["d_model"] = 48
    path = tmp_path / "wider.json"
    path.write_text(json.dumps(config))
    line = refused([runs["iidaf"], "--config-json", path, "--out", tmp_path / "out"], capsys)
    assert "does not fit" in line and "iidaf-mosi-seed1.pth" in line
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_rewritten_since_its_row_exits_2(runs, tmp_path, capsys):
    import shutil

    seeds = tmp_path / "iidaf-mosi-seeds.csv"
    rows = pd.read_csv(runs["results"] / "iidaf-mosi-seeds.csv")
    checkpoint = tmp_path / "iidaf-mosi-seed1.pth"
    shutil.copyfile(runs["iidaf"], checkpoint)
    rows.assign(checkpoint=str(checkpoint),
                checkpoint_sha256="f" * 64).to_csv(seeds, index=False)
    line = refused([checkpoint, "--seeds-csv", seeds, "--out", tmp_path / "out"], capsys)
    assert "is not the one its seeds row recorded" in line and "--model-save-dir" in line
    assert not (tmp_path / "out").exists()


def test_a_baseline_or_an_unknown_checkpoint_exits_2(runs, tmp_path, capsys):
    line = refused([runs["lf_dnn"], "--res-save-dir", runs["results"], "--out", tmp_path / "o"],
                   capsys)
    assert "needs a checkpoint of a model with shared and specific features" in line
    line = refused([tmp_path / "nowhere-mosi-seed3.pth", "--res-save-dir", runs["results"],
                    "--out", tmp_path / "o"], capsys)
    assert "no seeds row" in line
    line = refused([runs["iidaf"], "-d", "mosei", "--res-save-dir", runs["results"],
                    "--out", tmp_path / "o"], capsys)
    assert "trained on mosi" in line
    assert not (tmp_path / "o").exists()
