"""`ema_decay`: the trainer validates, saves and so tests an exponential moving average of the
weights; training itself steps the live weights unchanged; bad values stop a run before it
starts."""
from __future__ import annotations

import math

import MMSA
import pytest
import torch
from easydict import EasyDict
from torch import nn

from mmsa_iidaf import registry
from mmsa_iidaf.data.synthetic import write_dataset
from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.trainers.averaging import WeightAverage, ema_decay
from support import close_mmsa_handlers, iidaf_run_args, run_folders


def test_the_average_follows_the_ema_rule_and_the_live_weights_come_back():
    layer = nn.Linear(2, 1)
    layer.bias.requires_grad_(False)  # frozen: nothing to average
    average = WeightAverage(layer.parameters(), decay=0.75)
    assert average.parameters == [layer.weight]
    start = layer.weight.detach().clone()
    expected = start.clone()
    for value in (1.0, -2.0, 0.5):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update()
        expected = 0.75 * expected + 0.25 * value
    torch.testing.assert_close(average.average[0], expected)
    with average.swapped_in():
        torch.testing.assert_close(layer.weight.detach(), expected)
    assert torch.equal(layer.weight.detach(), torch.full_like(start, 0.5))


@pytest.mark.parametrize("value", [1.0, -0.1, "fast"])
def test_a_decay_outside_0_to_1_is_one_config_error(value):
    with pytest.raises(ConfigError, match="'ema_decay' = .* must be in \\[0, 1\\)"):
        ema_decay(EasyDict(ema_decay=value))
    assert ema_decay(EasyDict()) == 0.0


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("averaging") / "mosi.pkl", preset="mosi",
                         n_train=48, n_valid=16, n_test=16, seq_lens=(8, 8, 8), seed=3)


def test_the_checkpoint_holds_the_averaged_weights_and_training_is_unchanged(feature_file,
                                                                             tmp_path):
    def trained(decay: float, never_improves: bool = False):
        args = iidaf_run_args(feature_file, tmp_path / f"{decay}-{never_improves}.pth",
                              ema_decay=decay)
        torch.manual_seed(1)
        loaders = registry.build_dataloaders(args)
        model = registry.build_model(args)
        trainer = registry.build_trainer(args)
        if never_improves:  # a validation metric that is NaN throughout saves no epoch
            validate = trainer.validate
            trainer.validate = lambda *a, **k: {**validate(*a, **k), "Loss": math.nan}
        torch.manual_seed(2)
        trainer.do_train(model, loaders)
        return model, trainer, torch.load(args.model_save_path)

    plain, _, _ = trained(0.0)
    averaged, trainer, checkpoint = trained(0.5)
    # The optimiser steps the live weights exactly as without the average.
    for (name, live), same in zip(averaged.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(live, same, atol=0, rtol=0, msg=name)
    # The one epoch's checkpoint holds the average, which differs from the live weights.
    state = averaged.state_dict()
    named = {id(p): name for name, p in averaged.named_parameters()}
    for parameter, mean in zip(trainer.average.parameters, trainer.average.average):
        name = named[id(parameter)]
        torch.testing.assert_close(checkpoint[name], mean, atol=0, rtol=0, msg=name)
    assert not torch.equal(checkpoint[name], state[name])
    assert trainer.average.steps == 3  # 48 clips in batches of 16

    # Validation never improved: the checkpoint still holds the average, not the last weights.
    model, trainer, checkpoint = trained(0.5, never_improves=True)
    named = {id(p): name for name, p in model.named_parameters()}
    for parameter, mean in zip(trainer.average.parameters, trainer.average.average):
        torch.testing.assert_close(checkpoint[named[id(parameter)]], mean, atol=0, rtol=0)


def test_ema_decay_is_checked_before_any_folder(feature_file, tmp_path):
    folders = run_folders(tmp_path)
    try:
        with pytest.raises(ConfigError, match="'ema_decay' = 2"):
            MMSA.MMSA_run("iidaf", "mosi", config={"ema_decay": 2},
                          custom_feature=str(feature_file), seeds=[1], **folders)
        with pytest.raises(ConfigError, match="lf_dnn's trainer is MMSA's"):
            MMSA.MMSA_run("lf_dnn", "mosi", config={"ema_decay": 0.9},
                          custom_feature=str(feature_file), seeds=[1], **folders)
    finally:
        close_mmsa_handlers()
    assert not any(tmp_path.iterdir())
