"""Importing the embedding code, or resolving a device or a built-in encoder, never imports torch (the CLI starts fast)."""
import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "tokenizers")


def _loaded_after(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_embedding_modules_does_not_import_torch():
    assert _loaded_after("import transforms.embed, transforms.encoders.registry") == []


def test_resolving_cpu_and_the_default_encoders_builds_no_model():
    """The launcher fingerprints the default encoders from their files and knows their widths without torch."""
    code = (
        "from schemas.config import EncodeConfig, ExtractConfig\n"
        "from transforms.encoders.base import resolve_device\n"
        "from transforms.encoders.registry import resolve_encoder\n"
        "assert resolve_device('cpu') == 'cpu'\n"
        "dims = {v: resolve_encoder(m, v, encode=EncodeConfig(), extract=ExtractConfig()).dim for m, v in\n"
        "        [('text', 'minilm'), ('video', 'efficientnet-lite0'), ('audio', 'builtin:mfcc-stats'), ('audio', 'resemblyzer'),\n"
        "         ('video', 'builtin:color-hog')]}\n"
        "assert dims == {'minilm': 384, 'efficientnet-lite0': 1280, 'builtin:mfcc-stats': 160, 'resemblyzer': 256,\n"
        "                'builtin:color-hog': 108}, dims"
    )
    assert _loaded_after(code) == []


def test_the_registry_s_inline_names_are_the_inline_encoders():
    """The CLI decides from ``INLINE`` that a run needs no device (no torch); it must name exactly the built-ins whose
    encoder is computed inline."""
    from schemas.config import EncodeConfig, ExtractConfig
    from transforms.encoders.registry import BUILTIN, INLINE, resolve_encoder

    inline = {name for modality, builders in BUILTIN.items() for name in builders
              if resolve_encoder(modality, name, encode=EncodeConfig(), extract=ExtractConfig()).inline}
    assert inline == INLINE == {"builtin:mfcc-stats"}
