"""Known answers for compat's fixes and registry's lookups that a mutation review found unpinned:
B1 on a CUDA device, B5 on Chinese data, B6's MAG in the forward, B9's closed handlers, B11 for
MCTN, the per-seed run (best checkpoint tested, a classifier's logits kept, M-SENA's test
results to the hooks), the checkpoint's name, the config layers' order, UR-FUNNY's borrowed
settings, MMSA's default seeds, seeding, device choice, label ranges, the fine-tuned encoder and
the frozen-text cache."""
from __future__ import annotations

import ast
import json
import logging
import random
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import MMSA
import MMSA.run
from mmsa_iidaf import compat, encoder_cache, registry, wiring
from mmsa_iidaf.text_encoders import STAND_IN, resolve_pretrained


def model_args(model_name, **overrides):
    """MMSA's config for model_name on MOSI, as the run would give it to the model."""
    args = registry.config_for(model_name, "mosi")
    args.update(train_mode="regression", device=torch.device("cpu"), **overrides)
    return args


# --- compat: the fixes ------------------------------------------------------------------------

def test_b1_a_cuda_device_is_still_set(monkeypatch):
    """B1 skips set_device on the CPU only: a CUDA run must still pin its GPU (MMSA's comment:
    else RNNs run on GPU 0)."""
    seen = []
    monkeypatch.setattr(torch.cuda, "set_device", seen.append)
    MMSA.run.torch.cuda.set_device(torch.device("cuda:1"))
    MMSA.run.torch.cuda.set_device(torch.device("cpu"))
    assert seen == [torch.device("cuda:1")]


def test_b5_bert_mag_on_chinese_data_follows_pretrained_too(monkeypatch):
    """BERT_MAG's 'cn' branch (SIMS) named bert-base-chinese by hub name, as the 'en' one did."""
    from MMSA.models.singleTask.BERT_MAG import BERT_MAG, MAG_BertForSequenceClassification

    loaded = []

    def record(cls, name, *args, **kwargs):
        loaded.append(str(name))
        return nn.Identity()

    monkeypatch.setattr(MAG_BertForSequenceClassification, "from_pretrained", classmethod(record))
    BERT_MAG(model_args("bert_mag", pretrained="/local/encoder", language="cn"))
    assert loaded == ["/local/encoder"]


def test_b6_the_encoder_reads_the_mags_output_under_the_mask(monkeypatch):
    """MAG_BertModel's forward: embeddings -> MAG -> encoder (masked) -> pooler. Stand-in parts
    with arithmetic answers; test_compat's check has the MAG at the identity, so a forward that
    skipped it would pass there."""
    import transformers.masking_utils
    from MMSA.models.singleTask.BERT_MAG import MAG_BertModel

    monkeypatch.setattr(transformers.masking_utils, "create_bidirectional_mask",
                        lambda config, inputs_embeds, attention_mask: attention_mask)
    parts = types.SimpleNamespace(
        config=None,
        embeddings=lambda input_ids, position_ids, token_type_ids, inputs_embeds:
            input_ids.float()[..., None],
        MAG=lambda embedded, visual, acoustic: embedded + visual + 10 * acoustic,
        encoder=lambda x, attention_mask: types.SimpleNamespace(
            last_hidden_state=x * attention_mask[..., None]),
        pooler=lambda sequence: sequence[:, 0])
    ids = torch.tensor([[1, 2, 3]])
    visual, acoustic = torch.full((1, 3, 1), 0.5), torch.full((1, 3, 1), 0.25)
    sequence, pooled = MAG_BertModel.forward(parts, ids, visual, acoustic,
                                             attention_mask=torch.tensor([[1.0, 1.0, 0.0]]))
    # (id + 0.5 + 2.5) on the real tokens, 0 on the padded one.
    assert sequence.reshape(-1).tolist() == [4.0, 5.0, 0.0]
    assert pooled.reshape(-1).tolist() == [4.0]


def test_b9_the_replaced_handlers_are_closed(tmp_path, mmsa_logger):
    """The patch removes and closes an earlier call's handlers: an open file handler would keep
    the earlier run's log file open."""
    old = logging.FileHandler(tmp_path / "earlier.log")
    mmsa_logger.addHandler(old)
    MMSA.run._set_logger(tmp_path, "lf_dnn", "mosi", 0)
    assert old not in mmsa_logger.handlers and old.stream is None


def test_b11_mctn_tests_the_model_it_is_given():
    """B11 fixes MCTN's do_test as well as MMIM's (test_compat covers MMIM)."""
    from MMSA.trains.singleTask.MCTN import MCTN

    class Called(Exception):
        pass

    class Given(nn.Module):
        def forward(self, *inputs, **keywords):
            raise Called

    batch = {"text": torch.zeros(2, 4, 8), "audio": torch.zeros(2, 4, 5),
             "vision": torch.zeros(2, 4, 20), "labels": {"M": torch.zeros(2)}}
    with pytest.raises(Called):
        MCTN(model_args("mctn")).do_test(Given(), [batch], mode="TEST")


# --- compat: the per-seed run -----------------------------------------------------------------

class Samples(torch.utils.data.Dataset):
    """Four samples of input 1.0 with labels 0, 1, 0, 1 (what test_with_predictions reads)."""

    def __init__(self, split):
        self.split, self.ids = split, ["a", "b", "c", "d"]
        self.labels = {"M": np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32)}

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"x": torch.ones(1), "y": torch.tensor(self.labels["M"][index])}


class BestThenWorse:
    """Saves the 'best epoch' (weights 2) to the checkpoint, then ends on weights 3, as a
    trainer whose last epochs did not improve. Its test scores the split's first prediction."""

    def __init__(self, args):
        self.args = args
        self.metrics = lambda pred, true: {"first": float(pred.reshape(len(pred), -1)[0, 0])}

    def do_train(self, model, dataloader, return_epoch_results=False):
        nn.init.constant_(model.weight, 2.0)
        torch.save(model.state_dict(), self.args["model_save_path"])
        nn.init.constant_(model.weight, 3.0)
        return []

    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        pred, true = [], []
        with torch.no_grad():
            for batch in dataloader:
                pred.append(model(batch["x"]))
                true.append(batch["y"])
        results = self.metrics(torch.cat(pred), torch.cat(true))
        return {**results, "split": dataloader.dataset.split}


def stub_run(monkeypatch, tmp_path, outputs=1, from_sena=False):
    """compat.run_one_seed with MMSA's loader, model and trainer replaced by stand-ins (seed
    1234); returns (results, the "tested" hooks' test results, the "after" hooks' seed run)."""
    model = nn.Linear(1, outputs, bias=False)
    loaders = {split: torch.utils.data.DataLoader(Samples(split), batch_size=2, shuffle=True)
               for split in ("train", "valid", "test")}
    monkeypatch.setattr(MMSA.run, "MMDataLoader", lambda args, num_workers: loaders)
    monkeypatch.setattr(MMSA.run, "AMIO", lambda args: model)
    monkeypatch.setattr(MMSA.run, "ATIO", lambda: types.SimpleNamespace(getTrain=BestThenWorse))
    tested, after = [], []
    monkeypatch.setitem(compat.RUN_HOOKS, "before", [])
    monkeypatch.setitem(compat.RUN_HOOKS, "tested", [lambda a, results, p: tested.append(results)])
    monkeypatch.setitem(compat.RUN_HOOKS, "after", [lambda a, r, tune, run: after.append(run)])
    args = {"model_name": "stub", "dataset_name": "mosi", "KeyEval": "Loss",
            "model_save_path": tmp_path / "stub-mosi.pth", "device": torch.device("cpu")}
    torch.manual_seed(1234)
    results = compat.run_one_seed(args, num_workers=0, from_sena=from_sena)
    return results, tested, after[0]


def test_the_best_epochs_checkpoint_is_tested_and_kept(monkeypatch, tmp_path):
    """MMSA's baselines leave the last epoch's weights in the model: the saved best epoch must
    be loaded before the test, and is the seed's checkpoint afterwards."""
    results, tested, seed_run = stub_run(monkeypatch, tmp_path)
    assert results == {"first": 2.0, "split": "test"} and tested == [results]
    assert np.array_equal(seed_run.predictions["y_pred"], np.full(4, 2.0))
    assert list(seed_run.predictions["id"]) == ["a", "b", "c", "d"]
    kept = torch.load(tmp_path / "stub-mosi-seed1234.pth")
    assert kept["weight"].reshape(-1).tolist() == [2.0]


def test_a_classifiers_predictions_keep_every_logit(monkeypatch, tmp_path):
    """(n, k) logits are saved as they are: compare.load_predictions leaves 2-D y_pred out of the
    MAE statistics, so a first column saved alone would be scored as a regression output."""
    _, _, seed_run = stub_run(monkeypatch, tmp_path, outputs=2)
    assert seed_run.predictions["y_pred"].shape == (4, 2)


def test_m_senas_path_hands_the_test_splits_results_to_the_tested_hooks(monkeypatch, tmp_path):
    """check_finite_test reads what the "tested" hooks get: the test split's results."""
    results, tested, _ = stub_run(monkeypatch, tmp_path, from_sena=True)
    assert [r["split"] for r in results["final_results"].values()] == ["train", "valid", "test"]
    assert tested == [results["final_results"]["test"]]


def test_the_checkpoint_is_named_by_the_seed_itself_not_its_place():
    """Two runs with `-s 1111` and `-s 1112` are both the first seed of their run (cur_seed 1):
    named by position, the second would overwrite the first's checkpoint."""
    args = {"model_save_path": "/m/lf_dnn-mosi.pth", "model_name": "lf_dnn",
            "dataset_name": "mosi", "seed": 1112, "cur_seed": 1}
    assert compat.checkpoint_path(args) == Path("/m/lf_dnn-mosi-seed1112.pth")
    args.update(model_name="iidaf", run_name="iidaf[-mic]")
    assert compat.checkpoint_path(args) == Path("/m/iidaf[-mic]-mosi-seed1112.pth")


# --- registry ---------------------------------------------------------------------------------

def test_config_layers_merge_in_the_documented_order(tmp_path, monkeypatch):
    """MMSA's JSON < the plugin's configs/ < sections given at registration < the -c file, key
    by key. The shipped configs/ overrides no key of MMSA's, so only a test like this one can
    show the order."""
    mmsa = json.loads(registry.mmsa_config_file("regression").read_text())["lf_dnn"]
    plugin = tmp_path / "configs"
    plugin.mkdir()
    (plugin / "config_regression.json").write_text(json.dumps(
        {"lf_dnn": {"datasetParams": {"mosi": {"batch_size": 5, "learning_rate": 0.5}}}}))
    monkeypatch.setattr(registry, "plugin_config_dir", lambda: plugin)
    monkeypatch.setitem(registry.REGISTERED_CONFIG["regression"], "lf_dnn", {
        "datasetParams": {"mosi": {"learning_rate": 0.25, "weight_decay": 0.125}}})
    user = tmp_path / "mine.json"
    user.write_text('{"lf_dnn": {"datasetParams": {"mosi": {"weight_decay": 0.0625}}}}')
    mosi = registry.merged_config("regression", user)["lf_dnn"]["datasetParams"]["mosi"]
    assert (mosi["batch_size"], mosi["learning_rate"], mosi["weight_decay"]) == (5, 0.25, 0.0625)
    assert mosi["hidden_dims"] == mmsa["datasetParams"]["mosi"]["hidden_dims"]  # MMSA's alone


def test_mmsa_baselines_take_mosis_settings_on_ur_funny():
    """register_dataset("ur_funny", settings_like="mosi"): LF_DNN's MOSI and MOSEI settings
    differ (batch size, learning rate, widths), so a baseline's UR-FUNNY numbers depend on it."""
    mmsa = json.loads(registry.mmsa_config_file("regression").read_text())
    expected = mmsa["lf_dnn"]["datasetParams"]["mosi"]
    assert expected != mmsa["lf_dnn"]["datasetParams"]["mosei"]
    config = registry.config_for("lf_dnn", "ur_funny")
    assert {key: config[key] for key in expected} == expected


def test_default_seeds_are_mmsas():
    """The seeds run.py trains without -s are the ones MMSA_run writes inline."""
    source = Path(MMSA.run.__file__).read_text()  # MMSA_run itself is the plugin's now
    found = re.search(r"seeds if seeds != \[\] else (\[[\d, ]+\])", source)
    assert registry.DEFAULT_SEEDS == tuple(ast.literal_eval(found.group(1)))
    assert registry.DEFAULT_SEEDS == (1111, 1112, 1113, 1114, 1115)


def test_seed_everything_is_mmsas_setup_seed():
    """torch, numpy and random seeded, cuDNN deterministic (a tuning trial's reproducibility)."""
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        registry.seed_everything(7)
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == \
            (False, True)
        drawn = (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random())
        torch.manual_seed(7)
        np.random.seed(7)
        random.seed(7)
        assert drawn == (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random())
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = states[3:]


def test_device_for_is_mmsas_choice_of_the_asked_gpu(monkeypatch):
    """Tuning trials train where MMSA_run would: the GPU asked for, the CPU without CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert registry.device_for([1]) == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert registry.device_for([1]) == torch.device("cpu")


def test_label_ranges_are_the_datasets():
    """SIMS is annotated in [-1, 1] (MMSA's SIMS metrics clip to it), MOSI and MOSEI in
    [-3, 3], UR-FUNNY is 0/1: the feature check refuses labels outside."""
    assert registry.label_range("sims") == (-1.0, 1.0)
    assert registry.label_range("MOSI") == registry.label_range("mosei") == (-3.0, 3.0)
    assert registry.label_range("ur_funny") == (0.0, 1.0)
    assert "UR_FUNNY" in MMSA.run.SUPPORTED_DATASETS  # MMSA's own spelling: upper case


def test_a_fine_tuned_mmsa_bert_never_reads_cached_states(monkeypatch):
    """Cached states carry no gradient: a fine-tuned BertTextEncoder must run its model."""
    from MMSA.models.subNets import BertTextEncoder

    monkeypatch.setattr(encoder_cache, "lookup", lambda directory, text: "cached")
    encoder = types.SimpleNamespace(directory="enc",
                                    model=lambda **inputs: ("computed",))
    text = torch.zeros(1, 3, 4)
    encoder.use_finetune = True
    assert BertTextEncoder.forward(encoder, text) == "computed"
    encoder.use_finetune = False
    assert BertTextEncoder.forward(encoder, text) == "cached"


def test_a_trimmed_text_vocabulary_precomputes_no_pretrained_states(monkeypatch, hub_offline):
    """With text_vocabulary: train the encoder never reads the pretrained states: encoding
    every split with the full encoder would be a wasted pass."""
    calls = []
    monkeypatch.setattr(encoder_cache, "precompute", lambda *given: calls.append(given))
    args = registry.config_for("iidaf", "mosi")
    encoder = str(resolve_pretrained(STAND_IN))  # IIDAF's settings read its config
    args.update(model_name="iidaf", use_bert=True, use_finetune=False, pretrained=encoder)
    split = types.SimpleNamespace(args=args, text=np.zeros((2, 3, 4), dtype=np.float32))
    wiring.cache_frozen_text(split)
    assert len(calls) == 1 and calls[0][0] == encoder
    args["text_vocabulary"] = "train"
    wiring.cache_frozen_text(split)
    assert len(calls) == 1
