"""Speech media for tests: espeak-ng sentences with known word times (``transforms.speech_synth``), and the
marker that skips a test where espeak-ng is not installed."""
from __future__ import annotations

import pytest

from transforms.speech_synth import PLAIN_SENTENCES, espeak_available

needs_espeak = pytest.mark.skipif(
    not espeak_available(),
    reason="espeak-ng is not installed (apt-get install espeak-ng; `make install` and .ci/run do it): "
           "no speech can be synthesised for this test",
)

SENTENCES = PLAIN_SENTENCES[:6]
"""Plain sentences of everyday words, for the word error rate and word-time checks."""
