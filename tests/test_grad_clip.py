"""`grad_clip_scope`: which gradients `grad_clip` bounds (the model's own, everything by one
norm, or the text encoder and the rest apart); a bad value stops a run before it starts."""
from __future__ import annotations

import pytest
import torch
from easydict import EasyDict
from torch import nn

from mmsa_iidaf import runs
from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.trainers.joint import clip_gradients, clip_scope


class TwoParts(nn.Module):
    """A network with a "text encoder" and a "main" part, gradients of norm 3 and 4."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Parameter(torch.zeros(2))
        self.head = nn.Parameter(torch.zeros(2))
        self.encoder.grad = torch.tensor([3.0, 0.0])
        self.head.grad = torch.tensor([0.0, 4.0])

    def main_parameters(self):
        return [self.head]

    def text_encoder_parameters(self):
        return [self.encoder]


@pytest.mark.parametrize("scope, encoder_norm, head_norm", [
    ("main", 3.0, 1.0),        # the encoder's gradient untouched
    ("all", 0.6, 0.8),         # one joint norm of 5 scaled to 1: the ratio kept
    ("each", 1.0, 1.0),        # each part to norm 1
])
def test_each_scope_bounds_the_gradients_it_names(scope, encoder_norm, head_norm):
    network = TwoParts()
    clip_gradients(network, scope, max_norm=1.0)
    assert network.encoder.grad.norm().item() == pytest.approx(encoder_norm, rel=1e-5)
    assert network.head.grad.norm().item() == pytest.approx(head_norm, rel=1e-5)


def test_a_frozen_encoder_is_no_group_to_clip():
    network = TwoParts()
    network.encoder.grad = None
    clip_gradients(network, "each", max_norm=1.0)
    assert network.head.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_an_unknown_scope_is_one_config_error_before_training():
    assert clip_scope(EasyDict()) == "main"
    with pytest.raises(ConfigError, match="'grad_clip_scope' = 'both' must be one of main, all, "
                                          "each"):
        runs.check_before_training("iidaf", runs.preview_config(
            "iidaf", "mosi", None, {"grad_clip_scope": "both"}))


def test_mmsas_own_trainers_refuse_the_scope():
    with pytest.raises(ConfigError, match="misa's trainer is MMSA's, which has no clipping scope"):
        runs.check_before_training("misa", runs.preview_config(
            "misa", "mosi", None, {"grad_clip_scope": "all"}))


def trained_args(tmp_path, **overrides):
    """A tiny IIDAF run's args on a synthetic MOSI file (2 training batches)."""
    from mmsa_iidaf.data.synthetic import write_dataset
    from support import iidaf_run_args

    feature = write_dataset(tmp_path / "mosi.pkl", preset="mosi", n_train=32, n_valid=16,
                            n_test=16, seq_lens=(4, 4, 4), seed=3)
    return iidaf_run_args(feature, tmp_path / "m.pth", **overrides)


def test_each_batch_steps_the_critic_then_clips_and_steps_the_rest(tmp_path, monkeypatch):
    """Per batch: the critic's zero_grad and step, then the model's zero_grad, the clipping
    with the run's scope and bound, and its step (clipping after the step would bound
    nothing; a critic without zero_grad would sum its gradients over batches)."""
    import mmsa_iidaf.trainers.joint as joint
    from mmsa_iidaf import registry

    args = trained_args(tmp_path, grad_clip=0.5, grad_clip_scope="each")
    events, optimizers = [], {}
    clip = joint.clip_gradients
    zero_grad, step = torch.optim.AdamW.zero_grad, torch.optim.AdamW.step

    def named(optimizer):
        return optimizers.setdefault(id(optimizer), "critic" if len(optimizers) else "model")

    def recording_zero_grad(optimizer, *a, **k):
        events.append(f"{named(optimizer)} zero_grad")
        return zero_grad(optimizer, *a, **k)

    def recording_step(optimizer, *a, **k):
        events.append(f"{named(optimizer)} step")
        return step(optimizer, *a, **k)

    def recording_clip(network, scope, max_norm):
        events.append(f"clip {scope} {max_norm}")
        return clip(network, scope, max_norm)

    monkeypatch.setattr(joint, "clip_gradients", recording_clip)
    monkeypatch.setattr(torch.optim.AdamW, "zero_grad", recording_zero_grad)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    loaders = registry.build_dataloaders(args)  # sets the feature widths the model reads
    trainer, model = registry.build_trainer(args), registry.build_model(args)
    main, critic = trainer._optimizers(model.Model)
    named(main), named(critic)  # the model's optimizer is made first
    monkeypatch.setattr(trainer, "_optimizers", lambda network: (main, critic))
    trainer.do_train(model, loaders)
    batch = ["critic zero_grad", "critic step", "model zero_grad", "clip each 0.5", "model step"]
    assert events == batch * len(loaders["train"])


def test_the_optimizers_give_each_part_its_learning_rate():
    from mmsa_iidaf.trainers.joint import JointTrainer

    class Network:
        main, encoder, critic = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))

        def main_parameters(self):
            return [self.main]

        def text_encoder_parameters(self):
            return [self.encoder]

        def discriminator_parameters(self):
            return [self.critic]

    trainer = JointTrainer.__new__(JointTrainer)  # only its args are read
    trainer.args = EasyDict(learning_rate=1e-3, bert_learning_rate=2e-5,
                            disc_learning_rate=1e-4, weight_decay=0.0)
    main, critic = trainer._optimizers(Network())
    assert [group["lr"] for group in main.param_groups] == [1e-3, 2e-5]
    assert [group["lr"] for group in critic.param_groups] == [1e-4]
