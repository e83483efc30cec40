"""IIDAF and its experiment frame as an MMSA plugin.

`import mmsa_iidaf` opens MMSA 2.2.1 to registration, applies the runtime fixes of
`mmsa_iidaf.compat`, and registers this plugin's models and datasets; from then on
`MMSA.MMSA_run('iidaf', 'mosi', ...)` works, and so does every MMSA baseline.
`mmsa_iidaf.compare(models, dataset, seeds, ...)` trains several side by side and returns the
comparison table.
"""
from .wiring import install as _install

_install()

from MMSA import MMSA_run  # noqa: E402  (the entry point installed above)

from .experiments.compare import compare  # noqa: E402  (runs MMSA_run: after the install)

__all__ = ["MMSA_run", "compare"]
__version__ = "0.1.0"
