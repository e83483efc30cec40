"""Errors a user can fix. Each carries one line: what is wrong, where, and how to fix it.

`run.py` prints the line and exits with status 2; `MMSA_run` callers get the exception.
"""


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
