"""PNG reports of a training run: loss curves and confusion matrices (matplotlib, no display needed)."""
from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def loss_curves(history: list[dict[str, float]], path: str) -> None:
    """Training and validation loss per epoch of one fit."""
    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=120)
    axis.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], label="train")
    axis.plot([h["epoch"] for h in history], [h["val_loss"] for h in history], label="validation")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def confusion_matrix(matrix: list[list[int]], classes: list[Any], path: str, *, title: str) -> None:
    """A confusion matrix (rows: true class, columns: predicted class) with counts written in the cells."""
    figure, axis = plt.subplots(figsize=(3.6, 3.2), dpi=120)
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=30)
    axis.set_yticks(range(len(classes)), [str(c) for c in classes])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    for row, values in enumerate(matrix):
        for column, value in enumerate(values):
            axis.text(column, row, str(value), ha="center", va="center")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report_plots(report: dict[str, Any], tasks: list[Any], directory: str) -> list[str]:
    """``loss.png`` for the final fit and ``confusion_<label>.png`` summed over the folds; returns the files written."""
    written = [os.path.join(directory, "loss.png")]
    loss_curves(report["final_model"]["history"], written[0])
    for task in tasks:
        if task.kind != "classification" or not report.get("folds"):
            continue
        size = len(task.classes)
        total = [[0] * size for _ in range(size)]
        for fold in report["folds"]:
            for r, values in enumerate(fold[task.label]["confusion_matrix"]):
                for c, value in enumerate(values):
                    total[r][c] += value
        path = os.path.join(directory, f"confusion_{task.label}.png")
        confusion_matrix(total, task.classes, path, title=f"{task.label}: all folds")
        written.append(path)
    return written
