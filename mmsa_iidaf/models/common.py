"""Pieces every disentanglement model of this plugin shares on IIDAF's encoder front end (AO-FL,
MGRL, FDRL): the projector that makes a shared or specific feature, the settings of a peer (IIDAF's
front-end keys plus its own, with their checks), the input check, and the parameter groups the
joint trainer optimises."""
from __future__ import annotations

from collections.abc import Callable

from easydict import EasyDict
from torch import Tensor, nn

from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.losses.task import task_loss, task_targets

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


class PeerObjective:
    """L = L_T + Σ λ_k L_k, IIDAF's task loss L_T so that a comparison isolates the method. A
    subclass sets `terms` and, in `__init__`, `self.settings` and `self.weights` {term: λ}; its
    `__call__` hands `combine` a thunk per term (None where the term cannot exist)."""

    terms: tuple[str, ...] = ()

    def __init__(self, settings: EasyDict, weights: dict[str, float]):
        self.settings = settings
        self.train_mode = settings.train_mode
        self.weights = weights

    def task_targets(self, labels: Tensor) -> Tensor:
        return task_targets(labels, self.train_mode)

    def task_loss(self, prediction: Tensor, labels: Tensor) -> Tensor:
        return task_loss(prediction, labels, self.train_mode)

    def combine(self, prediction: Tensor, labels: Tensor,
                compute: dict[str, Callable[[], Tensor] | None]) -> dict:
        """A term whose λ is 0, or that cannot exist, is a plain 0 with no graph."""
        losses = {"L_T": self.task_loss(prediction, labels)}
        zero = losses["L_T"].new_zeros(())
        for term, weight in self.weights.items():
            losses[term] = compute[term]() if weight > 0 and compute[term] is not None else zero
        losses["total"] = losses["L_T"] + sum(self.weights[t] * losses[t] for t in self.weights)
        return losses


class JointModel(nn.Module):
    """The parameter groups of `trainers/joint.py`: a fine-tuned text encoder (`self.encoder`'s)
    at its own rate, an optional critic (a submodule `self.critic`: its own optimizer and loss),
    everything else together."""

    def encode(self, model_name: str, text, audio, vision, audio_lengths, vision_lengths) -> dict:
        """{m: X_m} of the configured modalities from IIDAF's encoder front end."""
        inputs = {"t": text, "a": audio, "v": vision}
        check_inputs(model_name, self.modalities, inputs)
        return self.encoder({m: inputs[m] for m in self.modalities},
                            {"a": audio_lengths, "v": vision_lengths})

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
