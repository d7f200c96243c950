"""Names the trainer's command line offers as choices, in a module that imports nothing heavy (no torch, no dask).

``runners.training_commands`` builds its parsers from these, so ``mmfeat --help``
and argparse's errors answer without importing torch; the modules that
implement each name (``trainer.heads``, ``trainer.sequence_encoders``,
``trainer.run``) import them from here.
"""
from __future__ import annotations

FUSIONS = ("concat", "weighted", "attention", "gated", "tensor", "lowrank", "late")
SEQUENCE_ENCODERS = ("gru", "transformer")
READERS = ("auto", "memory", "disk")
