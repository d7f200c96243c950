"""Synthesised speech with known word times, from espeak-ng (the Debian package ``espeak-ng``).

Used by ``make-sample-corpus --speech``, the speech tests and ``bench/asr.py``:
the synthesiser says where each word starts (its word events, through
``libespeak-ng``'s synchronous API by ``ctypes``), which is the reference the
recogniser's word times are checked against. Nothing is downloaded;
``espeak_available()`` says whether the library is installed.

The output is deterministic for a process's sequence of calls, but not
quite independent of it: espeak-ng keeps some state between utterances,
so the same text can come out a few samples different after other texts.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from schemas.config import ASR_SAMPLE_RATE

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_LOCK = threading.Lock()  # espeak-ng's state is per process and not thread-safe


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of ``speak_lib.h``."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class SynthesisedSpeech:
    """One synthesised utterance.

    Attributes:
        audio: float32 mono samples at 16 kHz, shape ``(n,)``, in ``[-1, 1]``.
        words: the words of the text (runs of letters, digits and apostrophes).
        word_starts_s: per word, the time it starts in seconds from the start of ``audio`` (espeak-ng's word
            event), or ``None`` for a word espeak-ng runs into the next one without an event of its own (it
            does so with some short function words, e.g. "the" in "on the mat").
    """

    audio: np.ndarray
    words: list[str]
    word_starts_s: list[Optional[float]]

    @property
    def duration_s(self) -> float:
        return len(self.audio) / ASR_SAMPLE_RATE


@functools.lru_cache(maxsize=1)
def _library() -> Optional[Any]:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    rate = library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0)
    if rate <= 0:
        return None
    library.mmfeat_rate = rate
    return library


def espeak_available() -> bool:
    """Whether libespeak-ng (Debian ``espeak-ng``) can be loaded and initialised."""
    return _library() is not None


def synthesise(text: str, *, voice: str = "en-us", words_per_minute: int = 160, pad_s: float = 0.3) -> SynthesisedSpeech:
    """Speak ``text`` with espeak-ng; ``pad_s`` seconds of silence before and after.

    Raises:
        RuntimeError: libespeak-ng is not installed (``apt-get install espeak-ng``).
    """
    library = _library()
    if library is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng): no speech can be synthesised")
    encoded = text.encode("utf-8")
    chunks: list[np.ndarray] = []
    events: list[tuple[int, int, int]] = []

    def on_audio(wav: Any, n_samples: int, event: Any) -> int:
        if n_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).astype(np.float32) / 32768.0)
        index = 0
        while event[index].type != _EVENT_LIST_TERMINATED:
            if event[index].type == _EVENT_WORD:
                events.append((event[index].text_position, event[index].length, event[index].audio_position))
            index += 1
        return 0

    callback = _CALLBACK(on_audio)
    with _LOCK:
        library.espeak_SetSynthCallback(callback)
        library.espeak_SetVoiceByName(voice.encode())
        library.espeak_SetParameter(1, words_per_minute, 0)  # espeakRATE, absolute
        library.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        library.espeak_Synchronize()
        rate = library.mmfeat_rate
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if rate != ASR_SAMPLE_RATE:
        import librosa

        audio = librosa.resample(audio, orig_sr=rate, target_sr=ASR_SAMPLE_RATE).astype(np.float32)
    pad = np.zeros(int(pad_s * ASR_SAMPLE_RATE), np.float32)
    spans = [(match.start(), match.group()) for match in _WORD.finditer(text)]
    starts: list[Optional[float]] = [None] * len(spans)
    for position, _, audio_ms in events:  # espeak-ng counts characters from 1
        index = next((k for k, (start, word) in enumerate(spans) if start <= position - 1 < start + len(word)), None)
        if index is not None and starts[index] is None:
            starts[index] = pad_s + audio_ms / 1000.0
    return SynthesisedSpeech(np.concatenate([pad, audio, pad]), [word for _, word in spans], starts)


_WORD = re.compile(r"[A-Za-z0-9']+")


PLAIN_SENTENCES = (
    "The cat sat on the mat, and the dog ran to the park.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather today is warm and sunny with a light breeze.",
    "Open the window because the room is getting very hot.",
    "My brother reads a long book every night before he sleeps.",
    "We bought fresh bread and green apples at the market.",
    "The train leaves the station at half past seven in the morning.",
    "Children were playing football in the garden after school.",
    "She painted the old fence white and planted roses along it.",
    "The museum opens its new exhibition about ancient ships next week.",
)
"""Sentences of everyday words with which a recogniser's word error rate and word times are measured (the speech
tests take the first six, ``bench/asr.py`` all)."""
