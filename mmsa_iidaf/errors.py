"""Errors a user can fix. Each carries one line: what is wrong, where, and how to fix it.

`run.py` prints the line and exits with status 2; `MMSA_run` callers get the exception.
"""
import math
from typing import Callable


class UserError(Exception):
    """Bad input from the user (a path, a name, a flag, a data file). Never a bug of ours."""


class UnknownNameError(UserError):
    """A model or dataset name that no registry knows."""


class FeatureFileError(UserError):
    """A feature pickle that is missing, unreadable or inconsistent."""


class TextEncoderUnavailable(UserError):
    """A BERT-family text encoder that cannot be loaded without the network."""


class ConfigError(UserError):
    """A config file or config value that cannot be used."""


class TrainingDiverged(UserError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


def config_number(args, key: str, default: float, accepted: Callable[[float], bool],
                  requirement: str) -> float:
    """`args[key]` (or `default`) as a float; ConfigError in one line unless `accepted` by it
    (a value that is not a number reads as NaN, which no comparison accepts)."""
    value = args.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not accepted(number):
        raise ConfigError(f"config '{key}' = {value!r} must be {requirement}")
    return number
