"""Captioning the sample corpus: a caption head that sees and hears the clips writes what a prior-only one cannot, and
the CLI trains, generates, evaluates and predicts with it."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.model_selection import KFold

from runners.cli import main
from tests.trainer.caches import extract_sample_cache
from trainer.captions import TargetTokenizer, cache_tokenizer_path
from trainer.data import open_view
from trainer.decoding import generate
from trainer.generate_run import read_generation_data
from trainer.generation import GenerateConfig, fit_generator
from trainer.text_metrics import generation_metrics


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return extract_sample_cache(tmp_path_factory, n=96, seed=0, image_encoder="builtin:color-hog")


def test_captions_from_video_and_audio_beat_the_prior_only_decoder_on_held_out_clips(cache):
    """4-fold: every clip is captioned once by a model that did not train on it; corpus scores over all 96.

    Measured here (split seeds 0-2): BLEU 58-59 against 21-22 for the prior-only decoder (2.7x), ROUGE-L 0.73 against
    0.38-0.41 (1.8x). Beam search (4) finds captions at least as likely as greedy decoding's, and scores within two BLEU
    points of it (58.8 vs 59.3, 57.6 vs 59.3, 57.9 vs 58.1 over split seeds; 59.3 vs 58.3, 57.3 vs 57.1, 59.1 vs 59.5 over
    three extractions): the one choice a caption leaves open is which of its two phrases comes first, a coin the
    reference drew, which no search can call."""
    view = open_view(cache)
    tokenizer = TargetTokenizer(cache_tokenizer_path(view))
    data, ids, references = read_generation_data(view, "caption", tokenizer, modalities=["video", "audio"])
    captions: dict[str, list] = {"greedy": [None] * len(data), "beam": [None] * len(data), "prior": [None] * len(data)}
    scores: dict[str, list] = {"greedy": [], "beam": []}
    for train, held_out in KFold(n_splits=4, shuffle=True, random_state=0).split(np.zeros(len(data))):
        model = fit_generator(data, ids, GenerateConfig(hidden=32), train)
        prior = fit_generator(data, ids, GenerateConfig(hidden=32, mask_inputs=True), train)
        for name, fitted, beams in (("greedy", model, 1), ("beam", model, 4), ("prior", prior, 1)):
            for row, generated in zip(held_out, generate(fitted, data, held_out, beams=beams)):
                captions[name][row] = tokenizer.decode(generated.ids)
                scores.setdefault(name, []).append(generated.score)
    metrics = {name: generation_metrics(texts, references) for name, texts in captions.items()}
    assert metrics["greedy"]["bleu"] >= 2 * metrics["prior"]["bleu"], metrics
    assert metrics["greedy"]["rouge_l"] >= 1.5 * metrics["prior"]["rouge_l"], metrics
    assert np.all(np.array(scores["beam"]) >= np.array(scores["greedy"]) - 1e-6)
    assert metrics["beam"]["bleu"] >= metrics["greedy"]["bleu"] - 3.0, metrics  # measured -1.7 to +1.0 over splits and extractions
    assert len(set(captions["prior"])) <= 4  # the prior writes (nearly) one caption whatever the clip


def test_train_generate_evaluate_and_predict_through_the_cli(cache, tmp_path, capsys):
    model = str(tmp_path / "captioner")
    assert main(["train", "--cache", cache, "--task", "generate", "--target", "caption", "--modalities", "video,audio",
                 "--folds", "2", "--epochs", "40", "--output", model]) == 0
    out = capsys.readouterr().out
    assert "caption head writing caption from video, audio (96 samples)" in out and "beam4/bleu" in out
    with open(f"{model}/cv_predictions.jsonl", encoding="utf-8") as handle:
        held_out = [json.loads(line) for line in handle]
    assert sorted(r["sample_id"] for r in held_out) == sorted(f"clip{i:03d}" for i in range(96))
    assert {"text", "score", "greedy", "reference", "fold"} <= set(held_out[0])

    captions = str(tmp_path / "captions.jsonl")
    assert main(["generate", "--model", model, "--cache", cache, "--output", captions, "--beams", "2", "--no-repeat-ngram", "2"]) == 0
    with open(captions, encoding="utf-8") as handle:
        written = [json.loads(line) for line in handle]
    assert len(written) == 96 and all(set(r) == {"sample_id", "text", "score"} and r["text"] and r["score"] <= 0 for r in written)
    assert main(["generate", "--model", model, "--cache", cache, "--output", captions]) == 2  # exists, no --overwrite

    capsys.readouterr()
    assert main(["evaluate", "--model", model, "--cache", cache, "--predictions", str(tmp_path / "eval.jsonl")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_samples"] == 96 and 0 < result["metrics"]["greedy"]["bleu"] <= 100 and "beam4" in result["metrics"]
    with open(tmp_path / "eval.jsonl", encoding="utf-8") as handle:
        assert sum(1 for _ in handle) == 96

    assert main(["predict", "--model", model, "--cache", cache, "--output", str(tmp_path / "p.parquet")]) == 0
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["sample_id", "modalities_present", "text", "score"] and table.num_rows == 96


def test_a_caption_head_starts_from_pretrained_projections(cache, tmp_path):
    space, model = str(tmp_path / "space"), str(tmp_path / "captioner")
    assert main(["pretrain", "--cache", cache, "--modalities", "video,audio", "--epochs", "20", "--output", space]) == 0
    assert main(["train", "--cache", cache, "--task", "generate", "--target", "caption", "--modalities", "video,audio", "--folds", "0",
                 "--epochs", "1", "--learning-rate", "1e-9", "--init", space, "--output", model]) == 0
    pretrained = torch.load(f"{space}/pretrain.pt", weights_only=True)
    started = torch.load(f"{model}/model.pt", weights_only=True)
    for modality in ("video", "audio"):
        key = f"projections.{modality}.1.weight"
        torch.testing.assert_close(started[key], pretrained[key], atol=1e-6, rtol=0)
    assert main(["train", "--cache", cache, "--task", "generate", "--target", "caption", "--modalities", "video,audio", "--folds", "0",
                 "--hidden", "16", "--init", space, "--output", str(tmp_path / "bad")]) == 2


@pytest.mark.parametrize("flags, message", [
    (["--task", "generate"], "needs --target"),
    (["--task", "generate", "--target", "caption", "--label", "label"], "--label"),
    (["--target", "caption"], "--label is required"),
    (["--task", "generate", "--target", "caption", "--beams", "0"], "--beams"),
    (["--task", "generate", "--target", "caption", "--sequence", "aligned"], "aligned"),
    (["--task", "generate", "--target", "caption", "--fusion", "concat"], "--fusion: not options of --task generate"),
    (["--task", "generate", "--target", "caption", "--aligned-set", "words"], "--aligned-set: not options of --task generate"),
])
def test_bad_generation_command_lines_fail_before_work(flags, message, tmp_path, capsys):
    assert main(["train", "--cache", str(tmp_path / "no-cache"), "--output", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_the_text_modalitys_own_tokens_as_the_target(cache, tmp_path, capsys):
    """--target tokens: the cache's token ids (special tokens dropped) are the captions; the texts say one of eight
    keywords, which video and audio do not carry, so only the sentence frame is learnt."""
    model = str(tmp_path / "echo")
    assert main(["train", "--cache", cache, "--task", "generate", "--target", "tokens", "--modalities", "video,audio", "--folds", "0",
                 "--epochs", "15", "--output", model]) == 0
    captions = str(tmp_path / "echo.jsonl")
    assert main(["generate", "--model", model, "--cache", cache, "--output", captions, "--beams", "1"]) == 0
    with open(captions, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    assert len(texts) == 96 and all(text.startswith(("this clip is", "the scene is", "this moment is")) for text in texts), texts[:5]
