#!/usr/bin/env python
"""MMSA's command line with the mmsa_iidaf plugin, e.g. `python run.py -m iidaf -d mosi --demo`."""
import sys

from mmsa_iidaf.cli import main

if __name__ == "__main__":
    sys.exit(main())
