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
