"""Known answers for gaps found by mutation testing: which output is u and which is r, config
checks, the paper's defaults, diagnostics values, early stopping on any KeyEval, modality
selection, the peers' shared settings and projector, and the synthetic data's planted signal.
Tiny sizes, CPU only, one thread (conftest)."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict
from torch import nn

from mmsa_iidaf.data.synthetic import SIGNAL_STRENGTH, make_dataset
from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.models import IIDAF
from mmsa_iidaf.models.common import peer_settings, projector
from mmsa_iidaf.models.iidaf.diagnostics import diagnose
from mmsa_iidaf.models.iidaf.settings import iidaf_settings
from mmsa_iidaf.trainers.iidaf import IIDAFTrainer

FEATURE_DIMS = [12, 6, 5]
WIDTH = 16


def make_args(**overrides) -> EasyDict:
    args = EasyDict(feature_dims=FEATURE_DIMS, d_model=WIDTH, conv_kernel=3, enc_layers=[1, 1, 1],
                    enc_heads=[2, 1, 1], shared_layers=1, shared_heads=2, mic_proj_dim=8,
                    disc_hidden=16, knn_k=2, train_mode="regression")
    args.update(overrides)
    return args


def make_inputs(batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, length, dim, generator=generator)
                 for length, dim in zip((4, 3, 2), FEATURE_DIMS))


def build(seed=0, **overrides) -> IIDAF:
    torch.manual_seed(seed)
    return IIDAF(make_args(**overrides))


def mlp_by_hand(sequential, x):
    """Linear-GELU-(Dropout)-Linear written out (eval: dropout is the identity)."""
    first, last = sequential[0], sequential[-1]
    return F.linear(F.gelu(F.linear(x, first.weight, first.bias)), last.weight, last.bias)


# ---------------------------------------------------------------- u and r reach the right keys

def test_outputs_shared_is_r_and_specific_is_u_with_iamd():
    """Eq. 8 after F: r = (1 − α) V_r + β V_u is 'shared', u = (1 − β) V_u + α V_r is
    'specific'. A swap would run unnoticed (u and r feed the same loss code) but would make L_S
    align u, and 'M_shared' (Table 8) read u."""
    model = build(dropout=0.0).eval()
    with torch.no_grad():
        outputs = model(*make_inputs(5))
        for m in "tav":
            iamd = model.disentanglers[m]
            latent = outputs["latent"][m]
            # h̃ = [ũ; r̃]: ũ from the specific MLP, r̃ from the shared MLP of X_m.
            encoded = outputs["encoded"][m]
            torch.testing.assert_close(latent[:, :WIDTH], mlp_by_hand(iamd.split.specific_mlp,
                                                                      encoded))
            torch.testing.assert_close(latent[:, WIDTH:], mlp_by_hand(iamd.split.shared_mlp,
                                                                      encoded))
            u_hat, r_hat = iamd.flow(latent).chunk(2, dim=-1)
            iamd.flow.forget()
            q_u, k_u, v_u = F.linear(u_hat, iamd.attention_mask.specific_qkv.weight).chunk(3, -1)
            q_r, k_r, v_r = F.linear(r_hat, iamd.attention_mask.shared_qkv.weight).chunk(3, -1)
            offsets = iamd.attention_mask.offsets
            alpha = torch.sigmoid(q_u * k_r / math.sqrt(WIDTH) + offsets[0])
            beta = torch.sigmoid(q_r * k_u / math.sqrt(WIDTH) + offsets[1])
            assert not torch.allclose(alpha, beta)
            torch.testing.assert_close(outputs["shared"][m], (1 - alpha) * v_r + beta * v_u)
            torch.testing.assert_close(outputs["specific"][m], (1 - beta) * v_u + alpha * v_r)


def test_outputs_shared_is_r_and_specific_is_u_without_iamd():
    """w/o IAMD: r = MLP_r(X_m) is 'shared', u = MLP_u(X_m) is 'specific'."""
    model = build(use_iamd=False).eval()
    with torch.no_grad():
        outputs = model(*make_inputs(5))
        for m in "tav":
            split, encoded = model.disentanglers[m], outputs["encoded"][m]
            torch.testing.assert_close(outputs["shared"][m],
                                       mlp_by_hand(split.shared_mlp, encoded))
            torch.testing.assert_close(outputs["specific"][m],
                                       mlp_by_hand(split.specific_mlp, encoded))


# ---------------------------------------------------------------- settings

def test_modalities_are_read_in_t_a_v_order():
    """'vat' and 'tav' are one ablation: the same order of parameters, of the fusion's inputs and
    of the fused_modalities buffer."""
    assert iidaf_settings(make_args(modalities="vat")).modalities == "tav"
    assert iidaf_settings(make_args(modalities="at")).modalities == "ta"
    assert build(modalities="va").modalities == "av"


@pytest.mark.parametrize("overrides, key", [
    ({"modality_dropout": 1.0}, "modality_dropout"),    # must be in [0, 1)
    ({"lambda_branch": -0.1}, "lambda_branch"),         # a loss weight: >= 0
    ({"train_mode": "classification", "num_classes": 1}, "num_classes"),  # >= 2 classes
])
def test_out_of_range_values_are_one_line_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key) as raised:
        iidaf_settings(make_args(**overrides))
    assert "\n" not in str(raised.value)


def test_defaults_are_the_papers_settings():
    """Table 2 (MOSI column) and J = 3 (§2.2) are the defaults of a config that sets nothing."""
    settings = iidaf_settings(EasyDict(feature_dims=FEATURE_DIMS))
    assert settings.householder_vectors == 3
    assert [settings[k] for k in ("lambda_in", "lambda_s", "lambda_h", "lambda_re",
                                  "lambda_mi")] == [0.1, 0.05, 0.3, 0.2, 0.1]
    assert settings.dropout == 0.1
    assert settings.enc_layers == {"t": 3, "a": 2, "v": 2}
    assert settings.enc_heads == {"t": 4, "a": 2, "v": 2}
    assert settings.use_iamd and settings.use_mic and settings.use_sgaff
    assert settings.modalities == "tav" and settings.modality_dropout == 0.0


# ---------------------------------------------------------------- diagnostics

def test_diagnostics_values_known_answer():
    """Batches of 4 and 3 samples, vision switched off at the fusion, the model handed over in
    training mode with heavy dropout: the report reads eval-mode outputs (γ's sample std, the
    RMS of r and of u, α's mean), the largest batch and all the split's samples."""
    model = build(dropout=0.5)
    model.fused_modalities[2] = 0
    batches = []
    for size, seed in ((4, 1), (3, 2)):
        inputs = make_inputs(size, seed)
        batches.append((inputs, {}, torch.randn(size, 1, generator=torch.Generator()
                                                .manual_seed(seed))))
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        outputs = [reference(*inputs) for inputs, _, _ in batches]
    gamma = torch.cat([o["gamma"] for o in outputs]).flatten()
    model.train()
    report = diagnose(model, batches, "regression")
    assert report["split_samples"] == 7 and report["batch_size"] == 4
    assert report["infonce_chance"] == pytest.approx(math.log(4))
    assert report["fused_modalities"] == "ta"
    assert report["width"] == WIDTH
    mean = gamma.mean()
    sample_std = ((gamma - mean) ** 2).sum().div(len(gamma) - 1).sqrt()
    assert report["gamma_mean"] == pytest.approx(float(mean), abs=1e-6)
    assert report["gamma_std"] == pytest.approx(float(sample_std), abs=1e-6)
    for m in "tav":
        shared = torch.cat([o["shared"][m] for o in outputs])
        specific = torch.cat([o["specific"][m] for o in outputs])
        alpha = torch.cat([o["mask_alpha"][m] for o in outputs])
        assert report["shared_rms"][m] == pytest.approx(float(shared.pow(2).mean().sqrt()),
                                                        rel=1e-5)
        assert report["specific_rms"][m] == pytest.approx(
            float(specific.pow(2).mean().sqrt()), rel=1e-5)
        assert report["mask_alpha_mean"][m] == pytest.approx(float(alpha.mean()), rel=1e-5)


# ---------------------------------------------------------------- early stopping, any KeyEval

class _OneWeight(nn.Module):
    """A network whose one weight the scripted epoch sets to the epoch number."""
    text_encoder = None

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def main_parameters(self):
        return [self.weight]

    def text_encoder_parameters(self):
        return []

    def discriminator_parameters(self):
        return []


class _Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.Model = _OneWeight()


def scripted_training(tmp_path, key_eval, values, early_stop=2):
    """do_train with each epoch's validation `values[epoch - 1]` for `key_eval` (the 'Loss'
    column a constant 5): (epochs run, the epoch whose weights were saved)."""
    path = tmp_path / f"{key_eval}.pth"
    args = make_args(dataset_name="mosi", KeyEval=key_eval, early_stop=early_stop,
                     max_epochs=len(values), model_save_path=str(path), model_name="iidaf",
                     seed=1, learning_rate=1e-3, weight_decay=0.0, device="cpu")
    trainer, model, epochs = IIDAFTrainer(args), _Wrapper(), []

    def train_epoch(model, loader, optimizer, disc_optimizer, epoch):
        with torch.no_grad():
            model.Model.weight.fill_(epoch)
        epochs.append(epoch)
        return {}

    def validate(model, loader):
        return {"Loss": 5.0, key_eval: values[epochs[-1] - 1]}

    trainer._train_epoch, trainer.validate = train_epoch, validate
    trainer.do_train(model, {"train": [], "valid": [], "test": []})
    return len(epochs), int(torch.load(path)["Model.weight"].item())


@pytest.mark.parametrize("key_eval, values", [
    ("Loss", [2.0, 1.0, 1.5, 1.0, 0.1]),        # lower is better; a tie is no improvement
    ("MAE", [1.0, 0.8, 0.9, 0.8, 0.1]),         # MAE: lower is better too
    ("Has0_acc_2", [0.5, 0.7, 0.6, 0.7, 0.9]),  # accuracy: higher is better
])
def test_early_stopping_and_the_saved_epoch_follow_key_eval(tmp_path, key_eval, values):
    """Best at epoch 2, then two epochs without a strict improvement (patience 2): training
    stops after epoch 4 with epoch 2's weights saved; epoch 5's better value is never seen."""
    assert scripted_training(tmp_path, key_eval, values) == (4, 2)


# ---------------------------------------------------------------- modality selection

class _Additive(nn.Module):
    """A fusion with a known answer: the prediction is the sum, over the fused modalities, of
    each modality's input mean."""

    def __init__(self, modalities):
        super().__init__()
        self.modalities = modalities
        self.register_buffer("fused_modalities", torch.ones(len(modalities)))

    def represent(self, text, audio, vision, audio_lengths=None, vision_lengths=None):
        inputs = dict(zip("tav", (text, audio, vision)))
        return {m: inputs[m].mean(dim=(1, 2)) for m in self.modalities}

    def fuse(self, representation, absent):
        kept = [representation[m] * (~absent[:, i]).float()
                for i, m in enumerate(self.modalities)]
        return {"M": torch.stack(kept).sum(0).unsqueeze(-1)}


class _SelectingModel(nn.Module):
    def __init__(self, modalities):
        super().__init__()
        self.Model = _Additive(modalities)

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None):
        network = self.Model
        representation = network.represent(text, audio, vision)
        absent = (network.fused_modalities == 0).expand(text.shape[0], -1)
        return network.fuse(representation, absent)


def selection_batches(labels_of, vision_scale=1.0):
    """Two batches of 6; labels_of(means {m: (B,)}) gives each batch's labels."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        text, audio, vision = (torch.randn(6, 3, 4, generator=generator) for _ in range(3))
        vision = vision * vision_scale
        means = {m: x.mean(dim=(1, 2)) for m, x in zip("tav", (text, audio, vision))}
        batches.append({"text": text, "audio": audio, "vision": vision,
                        "audio_lengths": [3] * 6, "vision_lengths": [3] * 6,
                        "labels": {"M": labels_of(means)}, "id": [str(i) for i in range(6)]})
    return batches


def selecting_trainer(modalities):
    args = make_args(dataset_name="mosi", KeyEval="Loss", model_name="iidaf", device="cpu",
                     modality_selection=True, modalities=modalities)
    return IIDAFTrainer(args)


def test_modality_selection_keeps_the_leave_one_out_set_that_scores_best():
    """Labels = a + v: the candidate without text fits exactly and is kept."""
    model = _SelectingModel("tav")
    results = selecting_trainer("tav").validate(model, selection_batches(
        lambda means: means["a"] + means["v"]))
    assert model.Model.fused_modalities.tolist() == [0, 1, 1]
    assert results["Loss"] == 0


def test_modality_selection_ties_keep_more_modalities():
    """Vision is all zeros (it adds nothing) and labels = t + a: every modality and the set
    without vision tie at loss 0; the tie keeps vision."""
    model = _SelectingModel("tav")
    selecting_trainer("tav").validate(model, selection_batches(
        lambda means: means["t"] + means["a"], vision_scale=0.0))
    assert model.Model.fused_modalities.tolist() == [1, 1, 1]


def test_modality_selection_never_switches_off_a_single_modality():
    """One modality: no set to choose, even where predicting nothing would score better."""
    model = _SelectingModel("a")
    results = selecting_trainer("a").validate(model, selection_batches(
        lambda means: 1e-3 * torch.tensor([1.0, -1.0] * 3)))
    assert model.Model.fused_modalities.tolist() == [1]
    assert results["Loss"] > 0.01


# ---------------------------------------------------------------- the peers' shared pieces

@pytest.mark.parametrize("value, accepted", [
    ({"weight": -0.1}, False), ({"weight": 0.0}, True),
    ({"temperature": 0.0}, False), ({"temperature": 1e-3}, True)])
def test_peer_settings_check_non_negative_and_positive_keys(value, accepted):
    args = EasyDict(feature_dims=FEATURE_DIMS, **value)
    check = dict(non_negative=("weight",), positive=("temperature",))
    defaults = {"weight": 1.0, "temperature": 1.0}
    if accepted:
        assert peer_settings(args, defaults, **check)[next(iter(value))] == next(
            iter(value.values()))
    else:
        with pytest.raises(ConfigError, match=next(iter(value))):
            peer_settings(args, defaults, **check)


def test_projector_is_linear_relu_linear():
    torch.manual_seed(0)
    layers = projector(8, dropout=0.5).eval()
    x = torch.randn(5, 8)
    first, last = layers[0], layers[-1]
    expected = F.linear(torch.relu(F.linear(x, first.weight, first.bias)), last.weight,
                        last.bias)
    torch.testing.assert_close(layers(x), expected)
    assert (F.linear(x, first.weight, first.bias) < 0).any()  # so that ReLU acts


# ---------------------------------------------------------------- synthetic data

def test_labels_lie_on_a_0_2_grid_with_exact_zeros():
    labels = make_dataset("mosi", n_train=256, n_valid=4, n_test=4)["train"]["regression_labels"]
    fifths = labels * 5
    np.testing.assert_allclose(fifths, np.round(fifths), atol=1e-4)
    assert (np.abs(np.round(fifths)) % 2 == 1).any()  # odd fifths: 0.2 steps, not 0.4
    assert (labels == 0).any() and labels.min() >= -3 and labels.max() <= 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_noise_each_frame_is_the_planted_signal(seed):
    """noise 0: each real audio / vision frame is strength · (y / 3) · d_m with d_m a unit vector
    on 4 channels (SIGNAL_CHANNELS), one d_m for every clip of every split."""
    data = make_dataset("mosi", n_train=40, n_valid=8, n_test=8, noise=0.0, seed=seed)
    for key in ("audio", "vision"):
        directions = []
        for part in data.values():
            y = part["regression_labels"]
            lengths = np.array(part[f"{key}_lengths"])
            for clip in np.flatnonzero(y != 0):
                frames = part[key][clip, :lengths[clip]]
                direction = frames / (SIGNAL_STRENGTH[key] * y[clip] / 3.0)
                np.testing.assert_allclose(direction, np.broadcast_to(direction[0],
                                                                      direction.shape),
                                           atol=1e-5)
                directions.append(direction[0])
        directions = np.array(directions)
        np.testing.assert_allclose(directions, np.broadcast_to(directions[0], directions.shape),
                                   atol=1e-5)
        assert np.linalg.norm(directions[0]) == pytest.approx(1.0, abs=1e-5)
        assert np.count_nonzero(directions[0]) == 4


def test_word_level_text_row_t_is_token_ts_embedding():
    """noise 0, neutral clips (y = 0, no signal): text row t is the embedding of text_bert's
    token t, so one token id always gives one row."""
    part = make_dataset("mosi", n_train=256, n_valid=4, n_test=4, noise=0.0)["train"]
    rows = {}
    neutral = np.flatnonzero(part["regression_labels"] == 0)
    assert len(neutral) >= 3
    for clip in neutral:
        count = int(part["text_bert"][clip, 1].sum())
        for position in range(count):
            token = int(part["text_bert"][clip, 0, position])
            row = part["text"][clip, position]
            if token in rows:
                np.testing.assert_array_equal(row, rows[token])
            rows[token] = row
    assert len(rows) > 10
