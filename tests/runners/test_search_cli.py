"""mmfeat index and mmfeat search on the demo cache (the 64-clip sample corpus, default encoders, as `make demo` makes it):
a sample finds itself, text queries find the clips that say what they ask for, and a stale index is refused, then
refreshed incrementally."""
import json
import os

import pytest

from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract import run_extract
from pipelines.manifest import open_manifest
from runners.cli import main
from schemas.cache import CacheView
from schemas.config import EncodeConfig, ExtractConfig
from transforms.encoders.registry import resolve_encoders
from tests.trainer.caches import extract_sample_cache

QUERIES = {  # written for this test: none is a sentence of the corpus ("<subject> is <keyword>.")
    "great": "that was a great piece",
    "wonderful": "what a wonderful thing to watch",
    "excellent": "excellent work overall",
    "lovely": "a lovely little film",
    "terrible": "it looked terrible to me",
    "awful": "an awful experience",
    "horrible": "the clip was horrible",
    "dreadful": "a dreadful scene",
    "lovely ": "such a lovely moment",  # a second query per keyword, other wording
    "dreadful ": "this moment felt dreadful",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    output = extract_sample_cache(tmp_path_factory, n=64, seed=0)
    for modality in ("text", "video"):
        if main(["index", "--cache", output, "--encoder", modality]) != 0:
            raise RuntimeError(f"indexing {modality} failed")
    return output


def _search(capsys, cache: str, *flags: str) -> list[dict]:
    capsys.readouterr()
    assert main(["search", "--cache", cache, *flags, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _texts(cache: str) -> dict[str, str]:
    source = CacheView.open(cache).run.summary["inputs"]["source"]
    texts = {}
    with open(source, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            with open(os.path.join(os.path.dirname(source), row["text"]), encoding="utf-8") as text:
                texts[row["id"]] = text.read().lower()
    return texts


def test_like_returns_the_sample_itself_first(cache, capsys):
    for index in ("text", "video"):
        for sample_id in ("clip000", "clip017", "clip063"):
            hits = _search(capsys, cache, "--index", index, "--like", sample_id, "-k", "3")
            assert hits[0]["sample_id"] == sample_id and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
            assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["label"] in ("positive", "negative") and "video" in hits[0]


def test_text_queries_rank_a_clip_saying_it_in_the_top_3(cache, capsys):
    texts = _texts(cache)
    found = {}
    for keyword, query in QUERIES.items():
        hits = _search(capsys, cache, "--index", "text", "--text", query, "-k", "3")
        found[query] = any(keyword.strip() in texts[h["sample_id"]] for h in hits)
    assert sum(found.values()) >= 0.8 * len(QUERIES), found


def test_a_file_query_goes_through_the_same_extraction(cache, capsys):
    corpus = os.path.dirname(CacheView.open(cache).run.summary["inputs"]["source"])
    hits = _search(capsys, cache, "--index", "video", "--file", os.path.join(corpus, "clip007.mp4"), "-k", "1")
    assert hits[0]["sample_id"] == "clip007" and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_extract_refreshes_indexes_and_a_stale_index_is_refused_then_refreshed(tmp_path, capsys, tokenizer_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = []
    for i, sentence in enumerate(["The river is calm.", "A loud engine starts.", "Snow falls on the hills.", "Bread is baking."]):
        (corpus / f"t{i}.txt").write_text(sentence, encoding="utf-8")
        rows.append({"id": f"t{i}", "text": f"t{i}.txt"})
    manifest = corpus / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")
    cache = str(tmp_path / "cache")
    flags = ["--image-encoder", "none", "--audio-encoder", "none", "--log-level", "WARNING"]
    assert main(["extract", "--manifest", str(manifest), "--output", cache, *flags]) == 0
    assert main(["index", "--cache", cache, "--encoder", "text"]) == 0
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]), encoding="utf-8")
    capsys.readouterr()
    assert main(["extract", "--manifest", str(manifest), "--output", cache, *flags]) == 0  # the CLI's run refreshes the index
    assert "index     text: 3 vectors (incremental, +1 -0)" in capsys.readouterr().out
    assert _search(capsys, cache, "--index", "text", "--text", "snowy hills", "-k", "1")[0]["sample_id"] == "t2"

    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    encode = EncodeConfig(image_encoder="none", audio_encoder="none", device="cpu")
    run_extract(open_manifest(str(manifest)), output=cache, config=ExtractConfig(), tokenizer_path=tokenizer_path, runner=FnApiRunner(),
                encoders=resolve_encoders(encode, ExtractConfig()), encode=encode)  # a run that does not refresh indexes
    capsys.readouterr()
    assert main(["index", "--cache", cache, "--list"]) == 0
    assert "3 vectors" in (listed := capsys.readouterr().out) and "; stale: run " in listed
    assert main(["search", "--cache", cache, "--index", "text", "--like", "t2"]) == 2
    assert f"mmfeat index --cache {cache} --name text --refresh" in capsys.readouterr().err
    assert main(["index", "--cache", cache, "--name", "text", "--refresh"]) == 0
    assert "4 vectors (incremental, +1 -0)" in capsys.readouterr().out
    assert _search(capsys, cache, "--index", "text", "--text", "fresh bread", "-k", "1")[0]["sample_id"] == "t3"


def test_across_modalities_through_a_pretrained_space(cache, tmp_path, capsys):
    space = str(tmp_path / "space")
    assert main(["pretrain", "--cache", cache, "--output", space, "--epochs", "30"]) == 0
    assert main(["index", "--cache", cache, "--encoder", "video", "--space", space]) == 0
    assert "video-space over embeddings/video/" in capsys.readouterr().out
    assert _search(capsys, cache, "--index", "video-space", "--like", "clip005", "-k", "2")[0]["sample_id"] == "clip005"
    hits = _search(capsys, cache, "--index", "video-space", "--text", "This clip is great.", "-k", "5")
    assert len({h["sample_id"] for h in hits}) == 5 and all(-1.0 <= h["similarity"] <= 1.0 for h in hits)


@pytest.mark.parametrize("flags, message", [
    (["search", "--index", "text", "--like", "nobody"], "'nobody' is not searchable"),
    (["search", "--index", "video", "--text", "a red disc"], "a text query searches a text index"),
    (["search", "--index", "text", "--like", "clip000", "-k", "0"], "-k must be >= 1"),
    (["search", "--index", "missing", "--like", "clip000"], "missing"),
    (["index", "--name", "x"], "--encoder MODALITY[=SET] is required"),
    (["index", "--encoder", "smell"], "the modality must be one of"),
    (["index", "--name", "text", "--refresh", "--encoder", "text"], "--encoder: --refresh keeps what index text was built with"),
])
def test_bad_search_command_lines_fail_saying_what_to_fix(cache, capsys, flags, message):
    capsys.readouterr()
    assert main([flags[0], "--cache", cache, *flags[1:]]) == 2
    assert message in capsys.readouterr().err
