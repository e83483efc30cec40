"""Interpretability of a trained IIDAF, from its checkpoint (the paper's Fig. 4, Fig. 5, Table 8),
and the same disentanglement numbers of its peers' checkpoints (AO-FL, MGRL, FDRL).

`python -m mmsa_iidaf.analysis CHECKPOINT -d mosi -f FILE --out DIR`; in Python,
`analyse(load_run(config, checkpoint), out_dir, command, source)`. `checkpoint` also brings back
any finished MMSA run (model, loaders, trainer) for the robustness evaluation.
"""
from .checkpoint import LoadedRun, find_seed_row, load_run, row_checkpoint
from .report import analyse

__all__ = ["LoadedRun", "analyse", "find_seed_row", "load_run", "row_checkpoint"]
