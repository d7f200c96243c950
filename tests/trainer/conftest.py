"""Fixtures of the trainer tests."""
from __future__ import annotations

import pytest

from tests.trainer.caches import extract_sample_cache


@pytest.fixture(scope="session")
def small_sample_cache(tmp_path_factory) -> str:
    """A 24-clip sample corpus extracted with ``builtin:color-hog`` and ``--sequences video,text``; read-only for the tests.

    ``test_train_cli.py`` and ``test_lazy_reading.py`` train and evaluate on it: one extraction (about 7 s) serves both.
    The per-frame and per-token vectors are stored beside the pooled ones, which training without ``--sequence`` does not
    read.
    """
    return extract_sample_cache(tmp_path_factory, n=24, seed=3, image_encoder="builtin:color-hog", extra=["--sequences", "video,text"])
