"""Each runtime fix of MMSA 2.2.1: the defect with the fix off, and its absence with it on."""
from __future__ import annotations

import ast
import importlib
import logging
import sys
import types

import pandas as pd
import pytest
import torch

import MMSA
import MMSA.run
from mmsa_iidaf import compat, registry, runs
from mmsa_iidaf.data.synthetic import PRESETS
from mmsa_iidaf.text_encoders import STAND_IN, resolve_pretrained

STAND_IN_WIDTH = 384  # all-MiniLM-L6-v2; MMSA assumed BERT-base's 768
# LF_DNN, MMSA's quickest baseline, made smaller still: the runs below test the run, not the model.
SMALL_LF_DNN = {"hidden_dims": [8, 4, 8], "text_out": 8, "post_fusion_dim": 8}
TINY_FEATURE_DIMS = list(PRESETS["mosi"].compact_dims)  # the tiny file's t, a, v widths


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """On tensors this small one thread is fastest; on a busy machine, threads that wait for
    each other make each run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mmsa_run(model, dataset, feature, dirs, **kwargs):
    """One quick seed on the tiny file: two epochs (early_stop 1), LF_DNN small."""
    config = {"early_stop": 1, **(SMALL_LF_DNN if model == "lf_dnn" else {})}
    return MMSA.MMSA_run(model, dataset, custom_feature=str(feature), config=config, seeds=[1],
                         **dirs, **kwargs)


def results_csv(dirs, dataset="mosi"):
    """MMSA's summary table of a normal (not tuning) run."""
    return dirs["res_save_dir"] / "normal" / f"{dataset}.csv"


def model_args(model_name, **overrides):
    """MMSA's config for model_name on MOSI, as the run would give it to the model."""
    args = registry.config_for(model_name, "mosi")
    args.update(train_mode="regression", device=torch.device("cpu"), **overrides)
    return args


def test_b1_set_device_only_for_cuda():
    cpu = torch.device("cpu")
    with compat.disabled("B1"):
        with pytest.raises(ValueError, match="Expected a cuda device"):
            MMSA.run.torch.cuda.set_device(cpu)
    MMSA.run.torch.cuda.set_device(cpu)
    # The rest of torch, as MMSA.run sees it, is torch itself.
    assert MMSA.run.torch.load is torch.load and MMSA.run.torch.cuda.is_available is \
        torch.cuda.is_available


def test_b2_lr_scheduler_accepts_verbose():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    trainer_modules = ["MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                       "MMSA.trains.missingTask.TFR_NET"]
    for module in map(importlib.import_module, trainer_modules):
        with compat.disabled("B2"):
            with pytest.raises(TypeError, match="verbose"):
                module.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, verbose=True)
        scheduler = module.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, verbose=True,
                                             patience=3)
        assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        assert (scheduler.factor, scheduler.patience) == (0.1, 3)


def test_b3_multitask_trainer_finishes_an_epoch(tiny_sims, run_dirs):
    dirs = run_dirs()
    with compat.disabled("B3"):
        with pytest.raises(UnboundLocalError, match="train_results"):
            mmsa_run("mlf_dnn", "sims", tiny_sims, dirs)
    mmsa_run("mlf_dnn", "sims", tiny_sims, dirs)
    assert list(pd.read_csv(results_csv(dirs, "sims"))["Model"]) == ["mlf_dnn"]


def test_b4_mctn_runs_on_the_configured_device():
    from MMSA.models.singleTask.MCTN import MCTN

    args = model_args("mctn", output_dim=8, hid_dim=4, max_seq_len=6)
    text, audio, vision = torch.randn(2, 6, 8), torch.randn(2, 6, 5), torch.randn(2, 6, 3)
    labels = torch.randn(2, 1)
    with compat.disabled("B4"):
        model = MCTN(args)
        assert (model.seq2seq1.device, model.seq2seq2.device) == ("cuda", "cuda")
        if not torch.cuda.is_available():
            with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
                model(text, audio, vision, labels, None)
    model = MCTN(args)
    assert model.seq2seq1.device == model.seq2seq2.device == args.device
    loss, _ = model(text, audio, vision, labels, None)
    assert torch.isfinite(loss)


def test_b5_bert_models_follow_pretrained_and_its_width(tiny_mosi, hub_offline, monkeypatch):
    from MMSA.data_loader import MMDataset
    from MMSA.models.missingTask.TFR_NET.model import TFR_NET
    from MMSA.models.singleTask.BERT_MAG import BERT_MAG, MAG_BertForSequenceClassification
    from MMSA.models.singleTask.MISA import MISA

    stand_in = str(resolve_pretrained(STAND_IN))
    encoder_output = torch.zeros(1, STAND_IN_WIDTH)

    # MISA loads the encoder it is given, but sizes its text projection for 768.
    misa_args = model_args("misa", pretrained=stand_in, feature_dims=[STAND_IN_WIDTH, 5, 20])
    with compat.disabled("B5"):
        misa = MISA(misa_args)
        assert misa.project_t.project_t.in_features == 768
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            misa.project_t(encoder_output)
    misa = MISA(misa_args)
    assert misa.project_t.project_t.in_features == STAND_IN_WIDTH
    assert misa.project_t(encoder_output).shape == (1, misa_args.hidden_size)

    # SELF_MM sizes its text layers by the config's `text_out` (768), not by its encoder.
    from MMSA.models.multiTask.SELF_MM import SELF_MM

    self_mm_args = model_args("self_mm", pretrained=stand_in, feature_dims=[STAND_IN_WIDTH, 5, 20])
    with compat.disabled("B5"):
        assert SELF_MM(self_mm_args).post_text_layer_1.in_features == 768
    assert SELF_MM(self_mm_args).post_text_layer_1.in_features == STAND_IN_WIDTH

    # TFR_NET ignores `pretrained` and asks the (unreachable) hub for bert-base-uncased.
    # Its temporal attention needs sequence lengths divisible by its head count.
    tfr_args = model_args("tfr_net", pretrained=stand_in, feature_dims=[STAND_IN_WIDTH, 5, 20],
                          seq_lens=[20, 30, 40], num_temporal_head=10)
    with compat.disabled("B5"):
        with pytest.raises(OSError):
            TFR_NET(tfr_args)
    tfr_net = TFR_NET(tfr_args)
    assert tfr_net.text_model.model.config.hidden_size == STAND_IN_WIDTH

    # BERT_MAG ignores `pretrained` too (what it loads is recorded, not loaded).
    loaded = []

    def record(cls, name, *args, **kwargs):
        loaded.append(str(name))
        return torch.nn.Identity()

    monkeypatch.setattr(MAG_BertForSequenceClassification, "from_pretrained", classmethod(record))
    mag_args = model_args("bert_mag", pretrained=stand_in)
    with compat.disabled("B5"):
        BERT_MAG(mag_args)
    BERT_MAG(mag_args)
    assert loaded == ["bert-base-uncased", stand_in]

    # The data loader tells the models a text width of 768 whatever the encoder is.
    loader_args = model_args("misa", pretrained=STAND_IN, custom_feature=str(tiny_mosi),
                             feature_T=None, feature_A=None, feature_V=None)
    runs.prepare_args(loader_args)  # what every run does first: resolves the encoder
    with compat.disabled("B5"):
        assert MMDataset(loader_args, mode="train").args["feature_dims"][0] == 768
    assert MMDataset(loader_args, mode="train").args["feature_dims"][0] == STAND_IN_WIDTH


def test_misa_reads_audio_and_vision_at_the_texts_lengths(hub_offline):
    """Left as MMSA ships it (README, "MMSA 2.2.1 on today's stack"): MISA packs its audio and
    vision LSTMs at the text's lengths, so frames after a clip's n_text are never read."""
    from MMSA.models.singleTask.MISA import MISA

    torch.manual_seed(0)
    args = model_args("misa", pretrained=str(resolve_pretrained(STAND_IN)),
                      feature_dims=[STAND_IN_WIDTH, 5, 20])
    misa = MISA(args).eval()
    text_length, frames = 6, 30
    ids = torch.randint(1000, 2000, (2, 10))
    mask = (torch.arange(10) < text_length).long().expand(2, 10)
    text = torch.stack([ids, mask, torch.zeros_like(ids)], dim=1).float()
    audio, vision = torch.randn(2, frames, 5), torch.randn(2, frames, 20)

    def predict(audio, vision):
        with torch.no_grad():
            return misa(text, audio, vision)["M"]

    reference = predict(audio, vision)
    later = torch.arange(frames) >= text_length
    changed_late = predict(audio + 5 * later[:, None], vision + 5 * later[:, None])
    changed_early = predict(audio + 5 * ~later[:, None], vision)
    assert torch.equal(reference, changed_late)
    assert not torch.allclose(reference, changed_early)


def test_b6_bert_mag_runs_on_transformers_5(hub_offline, tmp_path, run_dirs):
    from transformers import BertModel

    from MMSA.models.singleTask.BERT_MAG import BERT_MAG
    from mmsa_iidaf.data.synthetic import write_dataset

    stand_in = str(resolve_pretrained(STAND_IN))
    args = model_args("bert_mag", pretrained=stand_in, feature_dims=[STAND_IN_WIDTH, 5, 20])
    with compat.disabled("B6"):
        with pytest.raises(AttributeError, match="all_tied_weights_keys"):
            BERT_MAG(args)
    torch.manual_seed(0)
    model = BERT_MAG(args).eval()
    mag_bert = model.model.bert
    plain = BertModel.from_pretrained(stand_in).eval()
    batch, length = 3, 12
    ids = torch.randint(1000, 2000, (batch, length))
    mask = torch.ones(batch, length)
    mask[1, 8:] = 0  # padding, as text_bert's mask row has it
    segments = torch.zeros(batch, length, dtype=torch.long)
    vision, audio = torch.randn(batch, length, 20), torch.randn(batch, length, 5)
    with torch.no_grad():
        # With its gate at zero (W_hv, W_ha zero: no audio-visual shift) the MAG is its
        # LayerNorm alone ...
        for layer in (mag_bert.MAG.W_hv, mag_bert.MAG.W_ha):
            layer.weight.zero_()
            layer.bias.zero_()
        embedded = mag_bert.embeddings(input_ids=ids, token_type_ids=segments)
        assert torch.equal(mag_bert.MAG(embedded, vision, audio), mag_bert.MAG.LayerNorm(embedded))
        # ... and the rest of the forward pass is BertModel's: with that LayerNorm the identity,
        # the outputs are a plain BERT forward's.
        mag_bert.MAG.LayerNorm = torch.nn.Identity()
        ours = mag_bert(ids, vision, audio, attention_mask=mask, token_type_ids=segments)
        reference = plain(input_ids=ids, attention_mask=mask, token_type_ids=segments)
    torch.testing.assert_close(ours[0], reference.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1], reference.pooler_output, atol=1e-5, rtol=0)

    # A whole CPU run with the offline stand-in on word-aligned data (MAG's input).
    aligned = write_dataset(tmp_path / "aligned.pkl", preset="mosi", aligned=True, n_train=32,
                            n_valid=16, n_test=16)
    dirs = run_dirs()
    # learning_rate 0: two epochs (nothing improves after the first); the run is under test.
    MMSA.MMSA_run("bert_mag", "mosi", custom_feature=str(aligned), seeds=[1],
                  config={"early_stop": 1, "learning_rate": 0.0, "pretrained": STAND_IN}, **dirs)
    rows = pd.read_csv(dirs["res_save_dir"] / "bert_mag-mosi-seeds.csv")
    assert rows["MAE"].notna().all() and rows["text_encoder"][0].startswith(STAND_IN)


def test_b7_results_csv_holds_plain_numbers(tiny_mosi, run_dirs):
    with compat.disabled("B7"):
        dirs = run_dirs("fix-off")
        mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs)
        assert "np.float64" in results_csv(dirs).read_text()
    dirs = run_dirs("fix-on")
    mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs)
    assert "np.float64" not in results_csv(dirs).read_text()
    row = pd.read_csv(results_csv(dirs)).iloc[0]
    mean, std = ast.literal_eval(row["MAE"])
    assert isinstance(mean, float) and isinstance(std, float)


def test_b8_empty_config_file_means_default(tiny_mosi, run_dirs):
    dirs = run_dirs()
    with compat.disabled("B8"):
        with pytest.raises(FileNotFoundError):
            mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs, config_file="")
    mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs, config_file="")
    assert list(pd.read_csv(results_csv(dirs))["Model"]) == ["lf_dnn"]


def test_b9_one_set_of_log_handlers_per_process(tiny_mosi, run_dirs, mmsa_logger):
    dirs = run_dirs()
    for _ in range(2):
        mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs)
        kinds = sorted(type(handler).__name__ for handler in mmsa_logger.handlers)
        assert kinds == ["FileHandler", "StreamHandler"]
    with compat.disabled("B9"):
        mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs)
    # One more file and console handler: every line is now logged twice.
    assert len(mmsa_logger.handlers) == 4


def test_b10_mult_gives_a_fine_tuned_bert_its_own_learning_rate(monkeypatch):
    from MMSA.trains.singleTask import MULT

    mult_module = sys.modules[MULT.__module__]
    built = []

    class OptimizerBuilt(Exception):
        pass

    def adam(params, lr):
        built.append((list(params), lr))
        raise OptimizerBuilt

    monkeypatch.setattr(mult_module, "optim", types.SimpleNamespace(Adam=adam))
    # Named as in MMSA's AMIO(MULT): the encoder under `text_model.`, the rest beside it.
    model = torch.nn.ModuleDict({"text_model": torch.nn.Linear(2, 2), "proj": torch.nn.Linear(2, 1)})
    encoder = list(model["text_model"].parameters())

    def optimizer_of(args):
        built.clear()
        with pytest.raises(OptimizerBuilt):
            MULT(args).do_train(model, dataloader={})
        return built[0]

    args = model_args("mult", learning_rate_bert=5e-5)
    groups, lr = optimizer_of(args)
    assert lr == args.learning_rate == 2e-3
    assert groups[0]["lr"] == 5e-5 and groups[0]["params"] == encoder
    assert "lr" not in groups[1] and len(groups[1]["params"]) == 2  # the fusion rate
    # Without the key: one rate for all, as in 2.2.1.
    groups, _ = optimizer_of(model_args("mult"))
    assert groups[0]["lr"] == 2e-3
    with compat.disabled("B10"):
        params, lr = optimizer_of(args)
    assert len(params) == 4 and not isinstance(params[0], dict) and lr == 2e-3


def test_ckpt_a_stale_checkpoint_is_never_tested(tiny_mosi, run_dirs, monkeypatch, caplog,
                                                  tmp_path):
    """A seed whose validation metric never improves saves nothing; MMSA then tests whatever
    `{model}-{dataset}.pth` an earlier run left. Here the trainer never saves (it saves to a
    file no one reads), and stale weights (all 0.5) wait under both checkpoint names."""
    from MMSA.models import AMIO
    from MMSA.trains.singleTask.LF_DNN import LF_DNN

    stale_model = AMIO(model_args("lf_dnn", feature_dims=TINY_FEATURE_DIMS, **SMALL_LF_DNN))
    for parameter in stale_model.parameters():
        torch.nn.init.constant_(parameter, 0.5)
    stale_weights = torch.nn.utils.parameters_to_vector(stale_model.parameters()).detach()

    do_train, do_test = LF_DNN.do_train, LF_DNN.do_test
    weights = {}

    def train_without_checkpoint(self, model, dataloader, return_epoch_results=False):
        checkpoint = self.args["model_save_path"]
        self.args["model_save_path"] = tmp_path / "never-read.pth"
        try:
            result = do_train(self, model, dataloader, return_epoch_results)
        finally:
            self.args["model_save_path"] = checkpoint
        weights["last epoch"] = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        return result

    def record_tested_weights(self, model, dataloader, mode="VAL", return_sample_results=False):
        if mode == "TEST":
            weights["tested"] = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        return do_test(self, model, dataloader, mode, return_sample_results)

    monkeypatch.setattr(LF_DNN, "do_train", train_without_checkpoint)
    monkeypatch.setattr(LF_DNN, "do_test", record_tested_weights)

    def run_with_stale_checkpoints(name):
        dirs = run_dirs(name)
        dirs["model_save_dir"].mkdir(parents=True)
        for stale_name in ("lf_dnn-mosi.pth", "lf_dnn-mosi-seed1.pth"):
            torch.save(stale_model.state_dict(), dirs["model_save_dir"] / stale_name)
        mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs)
        return dirs

    with compat.disabled("CKPT"):
        run_with_stale_checkpoints("fix-off")
        assert torch.equal(weights["tested"], stale_weights)

    caplog.set_level(logging.WARNING, logger="MMSA")
    dirs = run_with_stale_checkpoints("fix-on")
    assert not torch.equal(weights["tested"], stale_weights)
    assert torch.equal(weights["tested"], weights["last epoch"])
    assert "never improved" in caplog.text
    # The seed's checkpoint is the model that was tested, not the stale file.
    kept = AMIO(model_args("lf_dnn", feature_dims=TINY_FEATURE_DIMS, **SMALL_LF_DNN))
    kept.load_state_dict(torch.load(dirs["model_save_dir"] / "lf_dnn-mosi-seed1.pth"))
    assert torch.equal(torch.nn.utils.parameters_to_vector(kept.parameters()), weights["tested"])


def test_ckpt_a_failing_run_or_a_tuning_trial_leaves_a_finished_seeds_checkpoint(
        tiny_mosi, run_dirs, monkeypatch):
    """Training writes a partial file, which replaces the seed's checkpoint only once the run
    has been tested: a run that fails mid-training, and a tuning trial of the same seed, leave
    the finished seed's file as it was (and no partial file behind)."""
    from MMSA.trains.singleTask.LF_DNN import LF_DNN

    from mmsa_iidaf.runs import file_sha256

    dirs = run_dirs("finished")
    mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs)
    checkpoint = dirs["model_save_dir"] / "lf_dnn-mosi-seed1.pth"
    finished = file_sha256(checkpoint)

    def fail(self, model, dataloader, return_epoch_results=False):
        torch.save(model.state_dict(), self.args["model_save_path"])  # an epoch was saved
        raise ValueError("a bad setting, found mid-training")

    with monkeypatch.context() as patch:
        patch.setattr(LF_DNN, "do_train", fail)
        with pytest.raises(ValueError, match="mid-training"):
            mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs)
    MMSA.MMSA_run("lf_dnn", "mosi", custom_feature=str(tiny_mosi), is_tune=True, tune_times=1,
                  seeds=[1], config={"early_stop": 1, **SMALL_LF_DNN}, **dirs)
    assert file_sha256(checkpoint) == finished
    assert sorted(path.name for path in dirs["model_save_dir"].iterdir()) == [checkpoint.name]


@pytest.mark.parametrize("from_sena", [False, True])
def test_a_diverged_mmsa_baseline_stops_in_one_error_and_keeps_the_finished_seed(
        tiny_mosi, run_dirs, monkeypatch, from_sena):
    """MMSA's own trainers go on through a NaN loss; the plugin stops the seed after its test,
    before its NaN row or weights replace what the seed had: one TrainingDiverged line. So does
    M-SENA's path (`from_sena`: train, valid and test scored per sample)."""
    from mmsa_iidaf.errors import TrainingDiverged
    from mmsa_iidaf.runs import file_sha256, seeds_csv

    dirs = run_dirs("diverged")
    mmsa_run("lf_dnn", "mosi", tiny_mosi, dirs)
    checkpoint = dirs["model_save_dir"] / "lf_dnn-mosi-seed1.pth"
    finished = file_sha256(checkpoint)
    if from_sena:
        monkeypatch.setattr(MMSA.run, "_run", lambda args, num_workers=4, is_tune=False:
                            compat.run_one_seed(args, num_workers, is_tune, from_sena=True))
    with pytest.raises(TrainingDiverged) as raised:
        MMSA.MMSA_run("lf_dnn", "mosi", custom_feature=str(tiny_mosi), seeds=[1],
                      config={"early_stop": 1, **SMALL_LF_DNN, "learning_rate": 1e30}, **dirs)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("seed 1: lf_dnn's test loss is nan")
    assert "lower learning_rate" in message
    assert file_sha256(checkpoint) == finished
    assert sorted(path.name for path in dirs["model_save_dir"].iterdir()) == [checkpoint.name]
    rows = pd.read_csv(seeds_csv(dirs["res_save_dir"], "lf_dnn", "mosi"))
    assert len(rows) == 1 and rows["MAE"].notna().all()


def test_tune_trials_are_scored_on_valid(tiny_mosi, run_dirs, monkeypatch):
    from MMSA.trains.singleTask.LF_DNN import LF_DNN

    do_test = LF_DNN.do_test
    scored = []

    def record_split(self, model, dataloader, mode="VAL", return_sample_results=False):
        scored.append(dataloader.dataset.mode)
        return do_test(self, model, dataloader, mode, return_sample_results)

    monkeypatch.setattr(LF_DNN, "do_test", record_split)
    # Separate result folders: a tuning run skips parameter sets its CSV already holds.
    with compat.disabled("TUNE"):
        mmsa_run("lf_dnn", "mosi", tiny_mosi, run_dirs("fix-off"), is_tune=True, tune_times=1)
    # Every epoch validates; the trial's score is the last call.
    assert scored[-1] == "test" and "test" not in scored[:-1]
    scored.clear()
    mmsa_run("lf_dnn", "mosi", tiny_mosi, run_dirs("fix-on"), is_tune=True, tune_times=1)
    assert scored and set(scored) == {"valid"}


def test_b11_mmim_tests_the_model_it_is_given():
    """MMIM's do_test evaluated `self.model`, set only by do_train: a fresh trainer testing a
    checkpoint (robustness, analysis) died with AttributeError."""
    from MMSA.trains.singleTask.MMIM import MMIM

    class Called(Exception):
        pass

    class Given(torch.nn.Module):
        def forward(self, *inputs):
            raise Called

    batch = {"text": torch.zeros(2, 3, 4), "audio": torch.zeros(2, 4, 5),
             "vision": torch.zeros(2, 4, 20), "labels": {"M": torch.zeros(2)},
             "audio_lengths": torch.full((2,), 4), "vision_lengths": torch.full((2,), 4)}
    trainer = MMIM(model_args("mmim"))
    with pytest.raises(Called):
        trainer.do_test(Given(), [batch], mode="TEST")
    with compat.disabled("B11"), pytest.raises(AttributeError, match="'model'"):
        MMIM(model_args("mmim")).do_test(Given(), [batch], mode="TEST")
