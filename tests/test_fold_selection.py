"""benchmarks/fold_selection.py: a choice over folds by video, from the runs' seeds files."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from support import import_benchmark

LOSSES = {"a": [0.90, 1.00, 0.80], "b": [0.95, 0.99, 0.86]}


def write_runs(root, figures, metric="valid_Loss", extra_rows=None):
    for name, values in figures.items():
        for fold, value in enumerate(values):
            folder = root / f"f{fold}" / name
            folder.mkdir(parents=True)
            rows = [{"seed": 1, "Loss": 99.0, metric: value}] + (extra_rows or [])
            pd.DataFrame(rows).to_csv(folder / "iidaf-mosi-seeds.csv", index=False)


@pytest.fixture
def selection(monkeypatch):
    return import_benchmark(monkeypatch, "fold_selection")


def test_the_lowest_mean_loss_over_folds_is_chosen_with_its_paired_differences(
        tmp_path, selection, capsys):
    write_runs(tmp_path, LOSSES)
    assert selection.main([str(tmp_path), "--candidates", "b,a"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # a: mean 0.9, std 0.1; b: mean 0.9333, differences to a 0.05, -0.01, 0.06.
    assert lines[2] == ("| **a** (chosen) | 0.9000 ± 0.1000 | 0.9000 / 1.0000 / 0.8000 | "
                        "+0.0000 | — |")
    p = stats.ttest_rel(LOSSES["b"], LOSSES["a"]).pvalue
    assert lines[3] == (f"| b | 0.9333 ± {np.std(LOSSES['b'], ddof=1):.4f} | "
                        f"0.9500 / 0.9900 / 0.8600 | +0.0333 | {p:.2f} |")
    assert len(lines) == 4


def test_a_fold_figure_is_the_mean_of_its_seeds_newest_rows(tmp_path, selection):
    folder = tmp_path / "run"
    folder.mkdir()
    pd.DataFrame({"seed": [1, 2, 1], "valid_Loss": [5.0, 2.0, 1.0]}).to_csv(
        folder / "x-mosi-seeds.csv", index=False)
    assert selection.fold_figure(folder, "valid_Loss") == pytest.approx(1.5)


def test_a_metric_where_larger_is_better_chooses_the_highest(tmp_path, selection):
    write_runs(tmp_path, {"a": [0.7, 0.8], "b": [0.75, 0.78]}, metric="valid_Corr")
    best, table = selection.summary(selection.fold_table(tmp_path, ["a", "b"], "valid_Corr"),
                                    "valid_Corr")
    assert best == "b" and list(table["candidate"]) == ["b", "a"]
    assert table.loc[1, "difference"] == pytest.approx(-0.015)


@pytest.mark.parametrize("argv, fragment", [
    (["--candidates", "a,b", "--metric", "Loss"], "a choice reads the validation split"),
    (["--candidates", "a"], "two or more names"),
    (["--candidates", "a,c"], "expected one *-seeds.csv, found 0"),
    (["--candidates", "a,b", "--metric", "valid_Corr"], "no column 'valid_Corr'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, selection, capsys, argv, fragment):
    write_runs(tmp_path, LOSSES)
    assert selection.main([str(tmp_path), *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and fragment in error


def test_fold_folders_must_run_from_f0_without_gaps(tmp_path, selection, capsys):
    for name in ("f0", "f2"):
        (tmp_path / name).mkdir()
    assert selection.main([str(tmp_path), "--candidates", "a,b"]) == 2
    assert "found ['f0', 'f2']" in capsys.readouterr().err
