"""Probe kinds, one module each; probed/kinds.py maps each kind to its probe."""
