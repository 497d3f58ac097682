"""Classification metrics shared by ``rtk eval``, ``rtk predict`` and ``rtk parity``: accuracy,
per-class accuracy and the confusion matrix, with a PNG rendering."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from toolkit.core.plots import pyplot, save_figure


@dataclass(frozen=True)
class ClassificationReport:
    """Accuracy figures of predictions against labels.

    Attributes:
        class_names: one name per class.
        confusion: ``confusion[true, predicted]`` counts, shape (C, C).
    """

    class_names: tuple[str, ...]
    confusion: np.ndarray

    @classmethod
    def from_predictions(cls, labels: Sequence[int], predictions: Sequence[int], class_names: Sequence[str]) -> "ClassificationReport":
        n = len(class_names)
        labels = np.asarray(labels, dtype=np.int64)
        predictions = np.asarray(predictions, dtype=np.int64)
        confusion = np.zeros((n, n), dtype=np.int64)
        np.add.at(confusion, (labels, predictions), 1)
        return cls(tuple(class_names), confusion)

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def per_class_accuracy(self) -> dict[str, float | None]:
        """Recall per class; ``None`` for a class with no samples."""
        support = self.confusion.sum(axis=1)
        return {
            name: (float(self.confusion[i, i] / support[i]) if support[i] else None)
            for i, name in enumerate(self.class_names)
        }

    def to_dict(self) -> dict[str, Any]:
        support = self.confusion.sum(axis=1)
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "per_class": {
                name: {"accuracy": acc, "support": int(support[i])}
                for i, (name, acc) in enumerate(self.per_class_accuracy().items())
            },
            "class_names": list(self.class_names),
            "confusion_matrix": self.confusion.tolist(),
        }

    def save_confusion_png(self, path: str | os.PathLike, title: str = "Confusion matrix") -> Path:
        """Render the confusion matrix (rows: actual, columns: predicted) as a PNG."""

        plt = pyplot()

        n = len(self.class_names)
        size = max(4.0, 0.45 * n + 2)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(self.confusion, cmap="Blues")
        ax.set_xticks(range(n), self.class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), self.class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{title} (accuracy {self.accuracy:.2%})")
        if n <= 30:
            peak = self.confusion.max(initial=0)
            for (i, j), value in np.ndenumerate(self.confusion):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color="white" if value > peak / 2 else "black")
        return save_figure(fig, path)
