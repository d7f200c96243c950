"""Encoders by name: the values ``--text-encoder``, ``--image-encoder`` and ``--audio-encoder`` accept.

A value is a built-in name (below), ``none``, a Hugging Face model folder,
or a TorchScript file. ``resolve_encoders`` builds and probes each one
before the pipeline starts, so a bad value fails with a message, not a job.

The encoder modules (torch, transformers, cv2) are imported by the builders,
so listing the names (``choices``, the CLI's help) imports none of them.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Optional

from schemas.config import EncodeConfig, ExtractConfig
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from transforms.encoders.base import Encoder

FLAGS = {"text": "--text-encoder", "video": "--image-encoder", "audio": "--audio-encoder"}
NONE = "none"
INLINE = frozenset({"builtin:mfcc-stats"})
"""Built-in names of inline encoders (``Encoder.inline``: computed by the extraction, no model, no torch, no device)."""

Builder = Callable[[EncodeConfig, ExtractConfig], "Encoder"]


def _minilm(enc: EncodeConfig, ext: ExtractConfig) -> Encoder:
    from transforms.encoders.text import default_text_encoder

    return default_text_encoder(trust_remote_code=enc.trust_remote_code)


def _efficientnet_lite0(enc: EncodeConfig, ext: ExtractConfig) -> Encoder:
    from transforms.encoders.image import EfficientNetLite0Encoder

    return EfficientNetLite0Encoder()


def _color_hog(enc: EncodeConfig, ext: ExtractConfig) -> Encoder:
    from transforms.encoders.builtin import ColorHogEncoder

    return ColorHogEncoder()


def _mfcc_stats(enc: EncodeConfig, ext: ExtractConfig) -> Encoder:
    from transforms.encoders.builtin import MfccStatsEncoder

    return MfccStatsEncoder(ext.audio.n_mfcc)


def _resemblyzer(enc: EncodeConfig, ext: ExtractConfig) -> Encoder:
    from transforms.encoders.audio import ResemblyzerEncoder

    return ResemblyzerEncoder(window_s=ext.audio.window_s)


BUILTIN: dict[str, dict[str, Builder]] = {
    "text": {"minilm": _minilm},
    "video": {"efficientnet-lite0": _efficientnet_lite0, "builtin:color-hog": _color_hog},
    "audio": {"builtin:mfcc-stats": _mfcc_stats, "resemblyzer": _resemblyzer},
}


def choices(modality: str) -> list[str]:
    """Built-in names of ``modality`` plus ``none`` (paths are accepted too)."""
    return [*BUILTIN[modality], NONE]


def _from_path(modality: str, path: str, encode: EncodeConfig, extract: ExtractConfig) -> Encoder:
    flag = FLAGS[modality]
    if os.path.isdir(path):
        if modality == "text":
            from transforms.encoders.text import HFTextEncoder

            return HFTextEncoder(path, name=os.path.basename(os.path.normpath(path)), trust_remote_code=encode.trust_remote_code)
        if modality == "video":
            from transforms.encoders.image import HFVisionEncoder

            return HFVisionEncoder(path, trust_remote_code=encode.trust_remote_code)
        from transforms.encoders.audio import HFAudioEncoder

        return HFAudioEncoder(path, window_s=extract.audio.window_s, trust_remote_code=encode.trust_remote_code)
    if modality == "text":
        raise ConfigError(f"{flag}: {path} is a file; a text encoder is a Hugging Face folder with a tokenizer.json")
    if modality == "video":
        from transforms.encoders.image import TorchScriptImageEncoder

        return TorchScriptImageEncoder(path)
    from transforms.encoders.audio import TorchScriptAudioEncoder

    return TorchScriptAudioEncoder(path, n_mfcc=extract.audio.n_mfcc, window_s=extract.audio.window_s)


def resolve_encoder(modality: str, value: str, *, encode: EncodeConfig, extract: ExtractConfig) -> Optional[Encoder]:
    """The probed encoder for ``value``, or ``None`` for ``none``.

    Raises:
        ConfigError: unknown name, missing path, not a model, or a model that fails to load or run.
    """
    if value == NONE:
        if modality in encode.sequences:
            raise ConfigError(f"--sequences {modality}: {FLAGS[modality]} is none, so there are no {modality} vectors to keep")
        return None
    if value in BUILTIN[modality]:
        encoder = BUILTIN[modality][value](encode, extract)
    elif os.path.exists(value):
        encoder = _from_path(modality, value, encode, extract)
    else:
        raise ConfigError(
            f"{FLAGS[modality]}: {value!r} is neither a built-in encoder ({', '.join(choices(modality))}) nor an existing path"
        )
    if modality in encode.sequences:
        if encoder.sequence_unit is None:
            raise ConfigError(f"--sequences {modality}: the {modality} encoder {encoder.name!r} has no per-frame, per-token "
                              "or per-window vectors")
        encoder.keep_sequences = True
    encoder.source = value
    encoder.probe()
    return encoder


def resolve_encoders(encode: EncodeConfig, extract: ExtractConfig) -> dict[str, Encoder]:
    """Probed encoders of every modality that is not ``none``, keyed by modality."""
    resolved = {}
    for modality in FLAGS:
        encoder = resolve_encoder(modality, encode.encoder_for(modality), encode=encode, extract=extract)
        if encoder is not None:
            resolved[modality] = encoder
    return resolved
