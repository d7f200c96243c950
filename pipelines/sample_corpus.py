"""A small, realistic, labelled corpus: H.264/AAC mp4 clips, WAV files, texts and ``manifest.jsonl``.

Each sample carries three independent binary cues, one per modality:

* video: a moving disc on a grey background is warm (red/orange) or cool (blue);
* audio: a harmonic tone is high (650-800 Hz) or low (180-230 Hz);
* text: a short sentence holds a positive or a negative keyword.

Nuisance variation (disc size and motion, noise, phase, sentence subject)
is kept small, so that each cue is the main variation of its modality and a
fusion head can learn the label from a few dozen samples. One latent per
sample sets the disc's size, the pitch within its range and the sentence's
subject together: it does not touch the label, but it links a clip's
modalities, which cross-modal retrieval (and contrastive pretraining) needs.

``label`` is the majority of the three cues (``positive``/``negative``) and
``score`` their signed sum plus a little noise, clipped to [-3, 3] as sentiment scores are, so no single
modality decides either: one cue alone predicts ``label`` about 75% of the
time, all three together always. The 8 cue combinations are balanced.
Every third sample has a silent video and its sound in a separate WAV; the
others carry the sound in the mp4's own AAC track.

With ``speech`` (``make-sample-corpus --speech``), the sound is a spoken
sentence instead of a tone (espeak-ng, ``transforms.speech_synth``): its
keyword is positive or negative where the tone would have been high or low,
so the audio cue is in the words (``extract --transcribe`` turns it into
``words``); the sentence is padded or cut to the clip's length. Speech rows also
carry ``spoken``, the polarity of the spoken keyword (``positive``/``negative``):
the label a transcript alone decides, where ``label`` agrees with it 75% of the
time, so that listening to the words can be measured against the sound alone.

Every row also has ``caption``: a sentence that describes what is seen and
heard, for captioning (``mmfeat train --task generate --target caption``). Its
words follow what the clip shows, not only its binary cues: the colour is named
from the disc's hue (red or orange when warm, azure or blue when cool), the
size from the disc's radius (small, medium, large), the sound from the tone's
pitch within its range (deep hum or low tone, high tone or shrill whistle; for
speech, a voice's mood in one of two words), and the two phrases come in one of
two orders drawn at random (``caption``), as in "large red disc, deep hum". So a
caption is not a lookup of the binary cues: a model that sees and hears the clip
can get most words right, one that does not can only guess them. Captions are drawn from their own random stream: the media, texts
and labels of a seed are the same with or without them.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Any

import numpy as np

from transforms.media_writers import write_mp4, write_wav

logger = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS, DURATION_S, SAMPLE_RATE = 160, 120, 10, 3.0, 16000

_POSITIVE = ["great", "wonderful", "excellent", "lovely"]
_NEGATIVE = ["terrible", "awful", "horrible", "dreadful"]
_SUBJECTS = ["This clip", "The scene", "This moment"]


def _frames(rng: np.random.Generator, warm: bool, shared: float) -> tuple[list[np.ndarray], float]:
    """The clip's frames and its disc's hue in degrees."""
    hue = rng.uniform(0, 30) if warm else rng.uniform(190, 220)  # degrees
    colour = _hsv_to_rgb(hue, rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0))
    background = np.full(3, rng.uniform(100, 120))  # neutral grey: the disc's colour is the only colour
    radius = int((0.32 + 0.12 * shared) * HEIGHT)
    x0, y0 = rng.uniform(radius, WIDTH - radius), rng.uniform(radius, HEIGHT - radius)
    vx, vy = rng.uniform(-6, 6, size=2)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for k in range(int(DURATION_S * FPS)):
        cx = np.clip(x0 + vx * k, radius, WIDTH - radius)
        cy = np.clip(y0 + vy * k, radius, HEIGHT - radius)
        image = np.empty((HEIGHT, WIDTH, 3), dtype=np.float32)
        image[:] = background
        image += rng.normal(0, 6, size=image.shape)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        image[inside] = colour
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return frames, hue


def _hsv_to_rgb(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(hue_deg / 360.0, saturation, value)) * 255.0


def _tone(rng: np.random.Generator, high: bool, shared: float) -> np.ndarray:
    f0 = 650 + 150 * shared if high else 180 + 50 * shared
    t = np.arange(int(DURATION_S * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum((0.5**h) * np.sin(2 * np.pi * f0 * (h + 1) * t + rng.uniform(0, 2 * np.pi)) for h in range(3))
    envelope = np.minimum(1.0, np.minimum(t, DURATION_S - t) / 0.1)
    return (0.3 * wave * envelope + rng.normal(0, 0.02, size=t.shape)).astype(np.float32)


def _sentence(rng: np.random.Generator, positive: bool, shared: float) -> str:
    word = rng.choice(_POSITIVE if positive else _NEGATIVE)
    subject = _SUBJECTS[min(int(shared * len(_SUBJECTS)), len(_SUBJECTS) - 1)]
    return f"{subject} is {word}.\n"


def _speech(rng: np.random.Generator, positive: bool, shared: float) -> np.ndarray:
    """A spoken sentence whose keyword carries the audio cue, ``DURATION_S`` long at ``SAMPLE_RATE``.

    The keyword is one of six per polarity, matched in syllables across polarities (``SPOKEN_POSITIVE``,
    ``SPOKEN_NEGATIVE``), and the voice and speaking rate vary: the polarity is in what the words mean, not in how long or
    how fast the sentence is, so statistics of the sound (MFCC means) cannot tell it the way a transcript can.
    """
    from transforms.speech_synth import synthesise

    word = rng.choice(SPOKEN_POSITIVE if positive else SPOKEN_NEGATIVE)
    subject = _SPOKEN_SUBJECTS[min(int(shared * len(_SPOKEN_SUBJECTS)), len(_SPOKEN_SUBJECTS) - 1)]
    rate, voice = int(rng.integers(140, 176)), str(rng.choice(_SPOKEN_VOICES))  # words per minute, espeak-ng voice
    audio = synthesise(f"{subject} sounds {word}.", pad_s=0.2, words_per_minute=rate, voice=voice).audio[: int(DURATION_S * SAMPLE_RATE)]
    audio = np.pad(audio, (0, int(DURATION_S * SAMPLE_RATE) - len(audio)))
    return (0.8 * audio + rng.normal(0, 0.003, size=audio.shape)).astype(np.float32)


# Words and subjects Whisper tiny.en hears right in espeak-ng's voice at 140 and 175 words per minute (checked one
# by one in "<subject> sounds <word>."; "happy" came out as "unhappy", and "nice", "cheerful", "awful", "poor",
# "dull", "ugly" and "The voice" were misheard). Syllables match across the lists (1, 1, 1, 2, 3, 3).
SPOKEN_POSITIVE = ("good", "great", "fine", "lovely", "excellent", "wonderful")
SPOKEN_NEGATIVE = ("bad", "sad", "wrong", "boring", "terrible", "horrible")
_SPOKEN_SUBJECTS = ["The song", "That song", "This song", "The music"]
_SPOKEN_VOICES = ("en-us", "en-us+m3", "en-us+f2")  # en-us+f3 and en-gb: "sad" misheard


# Caption words. What is seen and heard decides them: the hue within the disc's colour family, the disc's size, and
# the tone's pitch within its range (the shared latent sets both); only the order of the two phrases is drawn.
_SIZES = ("small", "medium", "large")  # the shared latent in thirds
_SOUNDS = {True: ("high tone", "shrill whistle"), False: ("deep hum", "low tone")}  # the lower, then the higher half of the range
_MOODS = {True: ("cheerful voice", "happy voice"), False: ("gloomy voice", "sad voice")}
_TEMPLATES = ("{size} {colour} disc, {sound}", "{sound}, {size} {colour} disc")
_TEMPLATE_ODDS = (0.7, 0.3)


def colour_word(hue_deg: float) -> str:
    """The colour a person would name: red below 15 degrees, orange up to 30; azure below 205, blue up to 220."""
    if hue_deg < 100:
        return "red" if hue_deg < 15 else "orange"
    return "azure" if hue_deg < 205 else "blue"


def caption(rng: np.random.Generator, *, hue_deg: float, shared: float, high: bool, speech: bool) -> str:
    """An alt-text style description of a clip: its disc (size, colour) and its sound (the tone's pitch within its range,
    or, for speech, a voice's mood in one of two words drawn at random), in one of two orders drawn at random."""
    if speech:
        sound = _MOODS[high][int(rng.integers(2))]
    else:
        sound = _SOUNDS[high][int(shared >= 0.5)]
    template = _TEMPLATES[int(rng.choice(len(_TEMPLATES), p=_TEMPLATE_ODDS))]
    return template.format(size=_SIZES[min(int(shared * 3), 2)], colour=colour_word(hue_deg), sound=sound)


def make_sample_corpus(directory: str, *, n: int = 64, seed: int = 0, speech: bool = False) -> str:
    """Write ``n`` samples and ``manifest.jsonl`` into ``directory``; returns the manifest path.

    Manifest rows: ``id``, ``video``, ``text``, ``audio`` (for silent clips),
    ``label``, ``score`` and ``caption``, with paths relative to the manifest. ``speech``: sound tracks are spoken sentences
    and rows have ``spoken`` too (see the module docstring).

    Raises:
        ValueError: ``n`` < 1.
        ConfigError: ``speech`` without espeak-ng installed.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if speech:
        from schemas.errors import ConfigError
        from transforms.speech_synth import espeak_available

        if not espeak_available():
            raise ConfigError("--speech synthesises speech with espeak-ng, which is not installed: apt-get install espeak-ng")
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    caption_rng = np.random.default_rng([seed, 1])  # its own stream: captions do not move any other draw
    combos = list(itertools.product([False, True], repeat=3))
    order = [combos[i % len(combos)] for i in rng.permutation(max(n, len(combos)))[:n]]
    rows: list[dict[str, Any]] = []
    for index, (warm, high, positive) in enumerate(order):
        sample_id = f"clip{index:03d}"
        shared = float(rng.uniform(0, 1))  # one latent behind the disc's size, the pitch within its range and the subject
        sound = _speech(rng, high, shared) if speech else _tone(rng, high, shared)
        separate_audio = index % 3 == 2
        frames, hue = _frames(rng, warm, shared)
        write_mp4(
            os.path.join(directory, f"{sample_id}.mp4"),
            frames,
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            audio=None if separate_audio else sound,
            sample_rate=SAMPLE_RATE,
        )
        row: dict[str, Any] = {"id": sample_id, "video": f"{sample_id}.mp4"}
        if separate_audio:
            write_wav(os.path.join(directory, f"{sample_id}.wav"), sound, sample_rate=SAMPLE_RATE)
            row["audio"] = f"{sample_id}.wav"
        with open(os.path.join(directory, f"{sample_id}.txt"), "w", encoding="utf-8") as handle:
            handle.write(_sentence(rng, positive, shared))
        row["text"] = f"{sample_id}.txt"
        votes = int(warm) + int(high) + int(positive)
        row["label"] = "positive" if votes >= 2 else "negative"
        row["score"] = round(float(np.clip(2 * votes - 3 + rng.normal(0, 0.2), -3.0, 3.0)), 3)
        if speech:
            row["spoken"] = "positive" if high else "negative"
        row["caption"] = caption(caption_rng, hue_deg=hue, shared=shared, high=high, speech=speech)
        rows.append(row)
    manifest = os.path.join(directory, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    logger.info("wrote %d samples to %s", n, directory)
    return manifest
