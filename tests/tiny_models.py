"""Tiny randomly initialised models saved the way users keep theirs: HF folders (``save_pretrained``) and TorchScript files.

They load through exactly the paths a user's checkpoint takes; nothing is downloaded.
"""
from __future__ import annotations

import os
import shutil

import torch

from transforms.encoders.hf import quiet_transformers

quiet_transformers()


def bert_folder(directory: str, tokenizer_json: str) -> str:
    """A 1-layer BERT (hidden 32) with the given tokenizer.json (its vocabulary must fit 30522 ids)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    shutil.copy(tokenizer_json, os.path.join(directory, "tokenizer.json"))
    return directory


def vit_folder(directory: str) -> str:
    """A 1-layer ViT on 32x32 inputs (hidden 24)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    ViTModel(config).save_pretrained(directory)
    return directory


def wav2vec2_folder(directory: str) -> str:
    """A 1-layer wav2vec2 (hidden 16) with per-frame layer norm, so padding with a mask changes nothing."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8, 8), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8),
        feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(directory)
    return directory


def wav2vec2_two_layer_folder(directory: str) -> str:
    """A 2-layer wav2vec2 (hidden 32) with the standard 7-layer, 320x-downsampling convolution stack, 16 channels
    wide (the default 512 costs about 10 s of CPU per 30 s window): 50 frames a second, like real checkpoints."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(directory)
    return directory


class _TinyConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, kernel_size=3, stride=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images))  # (n, 12, h, w): pooled by the encoder


class _TinyMfccNet(torch.nn.Module):
    def __init__(self, n_mfcc: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(n_mfcc, 10)

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        if mfcc.shape[1] < 20:
            raise ValueError("needs at least 20 MFCC frames")
        return torch.tanh(self.linear(mfcc))  # (1, frames, 10): pooled by the encoder


def torchscript_image_file(path: str) -> str:
    torch.manual_seed(0)
    torch.jit.script(_TinyConv()).save(path)
    return path


def torchscript_mfcc_file(path: str, n_mfcc: int = 40) -> str:
    """A scripted MFCC model that refuses inputs shorter than 20 frames (to exercise embedding failures)."""
    torch.manual_seed(0)
    torch.jit.script(_TinyMfccNet(n_mfcc)).save(path)
    return path
