"""Speech media for tests: espeak-ng sentences with known word times (``transforms.speech_synth``), and the
marker that skips a test where espeak-ng is not installed."""
from __future__ import annotations

import pytest

from transforms.speech_synth import espeak_available

needs_espeak = pytest.mark.skipif(
    not espeak_available(),
    reason="espeak-ng is not installed (apt-get install espeak-ng; `make install` and .ci/run do it): "
           "no speech can be synthesised for this test",
)

SENTENCES = (
    "The cat sat on the mat, and the dog ran to the park.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather today is warm and sunny with a light breeze.",
    "Open the window because the room is getting very hot.",
    "My brother reads a long book every night before he sleeps.",
    "We bought fresh bread and green apples at the market.",
)
"""Plain sentences of everyday words, for the word error rate and word-time checks."""
