"""Names the trainer's command line offers as choices, in a module that imports nothing heavy (no torch, no dask).

``runners.training_commands`` builds its parsers from these, so ``mmfeat --help``
and argparse's errors answer without importing torch; the modules that
implement each name (``trainer.heads``, ``trainer.sequence_encoders``,
``trainer.run``) import them from here.
"""
from __future__ import annotations

FUSIONS = ("concat", "weighted", "attention", "gated", "tensor", "lowrank", "late", "mult")
SEQUENCE_FUSIONS = ("mult",)
"""Fusions that take every modality as a sequence (``mmfeat compare`` adds them when the features are sequences)."""
SEQUENCE_ENCODERS = ("gru", "transformer")
ALIGNED_SEQUENCES = "aligned"
"""``--sequence aligned``: every modality read from an aligned set (``mmfeat align``; ``trainer.aligned``)."""
READERS = ("auto", "memory", "disk")
