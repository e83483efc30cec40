"""Pieces every disentanglement model of this plugin shares on IIDAF's encoder front end (AO-FL,
MGRL, FDRL): the projector that makes a shared or specific feature, the settings of a peer (IIDAF's
front-end keys plus its own, with their checks), the input check, and the parameter groups the
joint trainer optimises."""
from __future__ import annotations

from easydict import EasyDict
from torch import nn

from mmsa_iidaf.errors import ConfigError

from .iidaf.settings import iidaf_settings


def projector(width: int, dropout: float) -> nn.Sequential:
    """A two-layer MLP, linear last: its outputs take any sign, so angles between two of them can
    exceed 90° (a ReLU output could not)."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(width, width))


def peer_settings(args, defaults: dict, *, non_negative=(), positive=(),
                  choices: dict | None = None) -> EasyDict:
    """IIDAF's settings for the shared front end (encoder keys, modalities, output_dim), plus a
    peer's own keys with their defaults, checked: `non_negative` keys ≥ 0 (loss weights),
    `positive` keys > 0, `choices` {key: allowed values}."""
    settings = iidaf_settings(args)
    settings.update({key: args.get(key, default) for key, default in defaults.items()})
    for key in non_negative:
        if float(settings[key]) < 0:
            raise ConfigError(f"config '{key}' = {settings[key]} must be >= 0")
    for key in positive:
        if float(settings[key]) <= 0:
            raise ConfigError(f"config '{key}' = {settings[key]} must be > 0")
    for key, allowed in (choices or {}).items():
        if settings[key] not in allowed:
            raise ConfigError(f"config '{key}' = {settings[key]!r}: choose one of "
                              f"{', '.join(map(repr, allowed))}")
    return settings


def check_inputs(model_name: str, modalities: str, inputs: dict) -> None:
    missing = [m for m in modalities if inputs[m] is None]
    if missing:
        raise ConfigError(f"{model_name} got no input for modality '{missing[0]}' but config "
                          f"'modalities' = '{modalities}' includes it")


class JointModel(nn.Module):
    """The parameter groups of `trainers/joint.py`: a fine-tuned text encoder (`self.encoder`'s)
    at its own rate, an optional critic (a submodule `self.critic`: its own optimizer and loss),
    everything else together."""

    @property
    def text_encoder(self) -> nn.Module | None:
        return self.encoder.text_encoder

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return [] if self.text_encoder is None else list(self.text_encoder.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        # No class-level default: it would shadow the submodule nn.Module registers.
        critic = getattr(self, "critic", None)
        return [] if critic is None else list(critic.parameters())

    def main_parameters(self) -> list[nn.Parameter]:
        excluded = {id(p) for p in self.text_encoder_parameters()
                    + self.discriminator_parameters()}
        return [p for p in self.parameters() if id(p) not in excluded]
