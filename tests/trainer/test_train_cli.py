"""mmfeat train / evaluate on a real cache: metrics.json, a checkpoint that rebuilds from its config alone."""
import json
import os
import subprocess
import sys

import pytest

from runners.cli import main


@pytest.fixture(scope="module")
def cache(small_sample_cache) -> str:
    return small_sample_cache


def test_train_writes_metrics_and_a_checkpoint_that_evaluate_reproduces(cache, tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    argv = ["train", "--cache", cache, "--label", "label", "--fusion", "weighted", "--folds", "3", "--epochs", "80", "--output", model_dir]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "weighted on video, audio, text (24 samples)" in printed and "f1_macro" in printed
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert len(report["folds"]) == 3 and set(report["mean"]) == set(report["std"]) >= {"accuracy", "f1_macro", "precision_macro", "recall_macro"}
    assert sorted(os.listdir(model_dir)) == ["confusion_label.png", "loss.png", "metrics.json", "model.json", "model.pt"]
    assert open(os.path.join(model_dir, "loss.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    assert main(["evaluate", "--model", model_dir, "--cache", cache]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated == report["final_model"]["metrics_on_training_cache"]


def test_unimodal_baseline_is_one_flag_away_and_bad_labels_fail_clearly(cache, tmp_path, capsys):
    assert main(["train", "--cache", cache, "--label", "score", "--modalities", "text", "--fusion", "concat", "--folds", "3",
                 "--epochs", "40", "--output", str(tmp_path / "m")]) == 0
    printed = capsys.readouterr().out
    assert "concat on text (24 samples)" in printed and "acc2_has0" in printed and "acc7" in printed
    assert main(["train", "--cache", cache, "--label", "mood", "--output", str(tmp_path / "x")]) == 2
    assert "--label ['mood']: not a column of the samples table" in capsys.readouterr().err


def test_labels_can_come_from_a_separate_file_joined_by_sample_id(cache, tmp_path, capsys):
    from schemas.cache import CacheView

    samples = CacheView.open(cache).read("samples", ["sample_id", "label"]).to_pylist()
    labels = tmp_path / "moods.csv"
    labels.write_text("id,mood\n" + "".join(f"{r['sample_id']},{'up' if r['label'] == 'positive' else 'down'}\n" for r in samples[1:]))
    model_dir = str(tmp_path / "model")
    assert main(["train", "--cache", cache, "--labels-file", str(labels), "--label", "mood", "--fusion", "concat", "--folds", "2",
                 "--epochs", "30", "--output", model_dir]) == 0
    assert "(23 samples)" in capsys.readouterr().out  # the sample the file leaves out is not trained on
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["tasks"][0]["classes"] == ["down", "up"]
    assert main(["evaluate", "--model", model_dir, "--cache", cache, "--labels-file", str(labels)]) == 0
    assert json.loads(capsys.readouterr().out) == report["final_model"]["metrics_on_training_cache"]

    labels.write_text("id,mood\na,up\na,down\n")
    assert main(["train", "--cache", cache, "--labels-file", str(labels), "--label", "mood", "--output", str(tmp_path / "x")]) == 2
    assert "a sample id appears more than once" in capsys.readouterr().err
    assert main(["train", "--cache", cache, "--labels-file", str(labels), "--label", "valence", "--output", str(tmp_path / "y")]) == 2
    assert "no column ['valence']" in capsys.readouterr().err


def test_folds_0_still_prints_the_metrics_table(cache, tmp_path, capsys):
    assert main(["train", "--cache", cache, "--label", "label", "--fusion", "concat", "--folds", "0", "--epochs", "20",
                 "--output", str(tmp_path / "m")]) == 0
    printed = capsys.readouterr().out
    assert "on the training data (no cross-validation: --folds 0" in printed
    assert "accuracy" in printed and "f1_macro" in printed


def test_parallel_folds_are_one_flag_and_a_bad_jobs_fails_before_any_work(cache, tmp_path, capsys):
    argv = ["train", "--cache", cache, "--label", "label", "--fusion", "concat", "--folds", "2", "--epochs", "10"]
    reports = []
    for jobs in ("2", "1"):
        assert main([*argv, "--jobs", jobs, "--output", str(tmp_path / jobs)]) == 0
        with open(tmp_path / jobs / "metrics.json", encoding="utf-8") as handle:
            reports.append(json.load(handle))
    assert reports[0]["folds"] == reports[1]["folds"] and reports[0]["mean"] == reports[1]["mean"]
    assert main([*argv, "--jobs", "0", "--output", str(tmp_path / "x")]) == 2
    assert "--jobs must be >= 1 (got 0)" in capsys.readouterr().err


@pytest.mark.parametrize("command, stated", [
    ("train", ["--folds FOLDS k-fold cross-validation before the final fit (default 5;", "(default 300)", "--jobs N",
               "(default: the usable cores,"]),
    ("compare", ["(default 5)", "(default 300;", "--jobs N", "(default attention,concat,weighted)"]),
])
def test_help_states_the_defaults(command, stated, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    for text in stated:
        assert text in printed, text


def test_building_the_training_commands_imports_neither_torch_nor_the_trainer():
    code = ("import argparse, sys; import runners.training_commands as commands; parser = argparse.ArgumentParser(); "
            "commands.add_training_commands(parser.add_subparsers(), argparse.ArgumentParser(add_help=False)); "
            "print(sorted(m for m in ('torch', 'trainer.train', 'trainer.data', 'sklearn') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.strip() == "[]"
