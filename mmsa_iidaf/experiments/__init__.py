"""The experiment floor above one run: comparisons of several models or variants, their
statistics, ablations (and robustness). Each run underneath is an ordinary `MMSA_run`."""
