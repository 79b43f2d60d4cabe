"""Evaluation and training figures as PNG bytes (matplotlib's Agg canvas, no pyplot state, no display needed).

Each function returns the encoded PNG so the caller can write it atomically anywhere (local, gs://, s3://).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

from ecg_tfx.core import storage

_DPI = 120


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)  # constrained layout already fits everything
    return buffer.getvalue()


def _pretty(label: str) -> str:
    return label.replace("_", " ")


def confusion_matrix_png(panels: Mapping[str, Sequence[Sequence[int]]], labels: Sequence[str], title: str) -> bytes:
    """Single-label confusion matrices side by side (e.g. windows, records); rows true, columns predicted.

    Cells show the count and its share of the true class; the colour is that share, so classes of very
    different sizes read alike.
    """
    size = 2.0 + 1.0 * len(labels)
    figure = Figure(figsize=(size * len(panels) + 1.2, size + 0.6), layout="constrained")
    figure.suptitle(title)
    names = [_pretty(label) for label in labels]
    for index, (panel, matrix) in enumerate(panels.items()):
        counts = np.asarray(matrix, dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axes = figure.add_subplot(1, len(panels), index + 1)
        image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (row, column), count in np.ndenumerate(counts):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, f"{int(count)}\n{shares[row, column]:.0%}", ha="center", va="center",
                      color=colour, fontsize="medium" if len(labels) <= 3 else "small")
        axes.set_xticks(range(len(labels)), names, rotation=30, ha="right")
        axes.set_yticks(range(len(labels)), names if index == 0 else [])
        axes.set_xlabel("Predicted class")
        if index == 0:
            axes.set_ylabel("True class")
        axes.set_title(panel)
    figure.colorbar(image, ax=figure.axes, shrink=0.8, label="share of the true class")
    return _png(figure)


def multilabel_confusion_png(panels: Mapping[str, Mapping[str, Sequence[Sequence[int]]]], title: str) -> bytes:
    """Multi-label: one [[TN, FP], [FN, TP]] matrix per class (columns) and per panel (rows, e.g. windows)."""
    classes = len(next(iter(panels.values())))
    figure = Figure(figsize=(2.4 * classes, 2.5 * len(panels) + 0.5), layout="constrained")
    figure.suptitle(f"{title} (colour = share of examples)")
    for row, (panel, matrices) in enumerate(panels.items()):
        for column, (name, matrix) in enumerate(matrices.items()):
            counts = np.asarray(matrix, dtype=float)
            shares = counts / max(counts.sum(), 1)
            axes = figure.add_subplot(len(panels), classes, row * classes + column + 1)
            axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
            for (i, j), count in np.ndenumerate(counts):
                axes.text(j, i, str(int(count)), ha="center", va="center",
                          color="white" if shares[i, j] > 0.5 else "black")
            axes.set_xticks([0, 1], ["absent", "present"])
            axes.set_yticks([0, 1], ["absent", "present"])
            axes.set_xlabel("Predicted")
            axes.set_ylabel(f"{panel}\nTrue" if column == 0 else "True")
            axes.set_title(_pretty(name))
    return _png(figure)


def roc_png(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[str], title: str) -> bytes:
    """Side-by-side panels of (targets, probabilities): one-vs-rest ROC per class, the macro average, chance.

    The macro curve averages the class curves' true positive rates on a common false positive rate grid; its
    legend gives the mean of the class AUCs, as metrics.json does.
    """
    figure = Figure(figsize=(5.6 * len(panels), 5.8), layout="constrained")
    figure.suptitle(title)
    grid = np.linspace(0, 1, 201)
    for index, (panel, (y_true, probabilities)) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), index + 1)
        curves, aucs = [], []
        for column, name in enumerate(labels):
            truth = y_true[:, column]
            if truth.min() == truth.max():
                continue  # ROC undefined without both positives and negatives
            fpr, tpr, _ = skm.roc_curve(truth, probabilities[:, column])
            aucs.append(skm.auc(fpr, tpr))
            axes.plot(fpr, tpr, linewidth=1.3, label=f"{_pretty(name)} (AUC {aucs[-1]:.3f})")
            curves.append(np.interp(grid, fpr, tpr))
        if curves:
            mean_tpr = np.mean(curves, axis=0)
            mean_tpr[0] = 0.0
            axes.plot(grid, mean_tpr, "k-", linewidth=2.4, label=f"macro average (mean AUC {np.mean(aucs):.3f})")
        else:
            axes.text(0.5, 0.5, "no class has both positive\nand negative examples", ha="center")
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        axes.set_xlim(-0.01, 1.01)
        axes.set_ylim(-0.01, 1.01)
        axes.set_aspect("equal")
        axes.set_xlabel("False positive rate (1 − specificity)")
        axes.set_ylabel("True positive rate (sensitivity)")
        axes.set_title(panel)
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize="small")
    return _png(figure)


def reliability_png(panels: Mapping[str, Mapping], title: str, confidence_label: str) -> bytes:
    """Reliability diagram: per panel (e.g. raw, calibrated) the observed frequency against the mean confidence of
    each bin of `calibration.reliability` (marker area = examples in the bin), and the diagonal of perfect
    calibration."""
    figure = Figure(figsize=(5.4 * len(panels), 5.4), layout="constrained")
    figure.suptitle(title)
    for index, (panel, bins) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), index + 1)
        filled = [i for i, count in enumerate(bins["counts"]) if count]
        edges = np.linspace(0, 1, bins["bins"] + 1)
        axes.bar(edges[:-1], [bins["frequency"][i] or 0 for i in range(bins["bins"])], width=1 / bins["bins"],
                 align="edge", alpha=0.3, edgecolor="tab:blue", label="observed frequency per bin")
        counts = np.array([bins["counts"][i] for i in filled], dtype=float)
        axes.scatter([bins["mean_confidence"][i] for i in filled], [bins["frequency"][i] for i in filled],
                     s=20 + 200 * counts / max(counts.max(), 1), color="tab:blue", zorder=3)
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_aspect("equal")
        axes.set_xlabel(confidence_label)
        axes.set_ylabel("observed frequency")
        axes.set_title(panel)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", fontsize="small")
    return _png(figure)


def coverage_png(coverage: np.ndarray, accuracy: np.ndarray, chosen: Mapping, title: str) -> bytes:
    """Accuracy of the answered examples against coverage as the confidence threshold falls; the chosen
    threshold's point (`chosen`: the `abstention` entry of metrics.json's decision) is marked."""
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    axes.step(coverage, accuracy, where="post", color="tab:blue", label="answered at confidence >= threshold")
    if chosen["accuracy_answered"] is not None:
        axes.plot([chosen["coverage"]], [chosen["accuracy_answered"]], "o", color="tab:red", markersize=8,
                  label=f"threshold {chosen['threshold']:.3f}: coverage {chosen['coverage']:.0%}, "
                        f"accuracy {chosen['accuracy_answered']:.1%}")
    axes.set_xlim(0, 1.01)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("coverage (share of examples answered)")
    axes.set_ylabel("accuracy of the answered")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    return _png(figure)


def sample_predictions_png(
    signals: np.ndarray,
    sample_rate_hz: float,
    lead: str,
    titles: Sequence[str],
    correct: Sequence[bool],
    amplitude_label: str,
) -> bytes:
    """One trace per row ([examples, time] of one lead); titles in green when correct, red when wrong."""
    figure = Figure(figsize=(12, 1.9 * len(signals) + 0.4), layout="constrained")
    figure.suptitle(f"Sample predictions (lead {lead.upper()})")
    seconds = np.arange(signals.shape[1]) / sample_rate_hz
    for index, (trace, title, right) in enumerate(zip(signals, titles, correct)):
        axes = figure.add_subplot(len(signals), 1, index + 1)
        axes.plot(seconds, trace, linewidth=0.7, color="black")
        axes.set_title(title, fontsize="medium", loc="left", color="tab:green" if right else "tab:red")
        axes.set_xlim(seconds[0], seconds[-1])
        axes.set_ylabel(amplitude_label)
        axes.grid(alpha=0.3)
        if index == len(signals) - 1:
            axes.set_xlabel("Time (s)")
    return _png(figure)


def training_history_png(history_csv: str, title: str = "Training history") -> bytes:
    """Loss and metrics per epoch, train vs validation, from the text of Keras' CSVLogger `history.csv`.

    A resumed run can log an epoch twice (CSVLogger appends after BackupAndRestore); the last row wins.
    """
    rows = {row["epoch"]: row for row in csv.DictReader(io.StringIO(history_csv))}
    if not rows:
        raise ValueError("history.csv has no epochs")
    rows = sorted(rows.values(), key=lambda row: int(row["epoch"]))
    columns = {key: np.array([float(row[key] or "nan") for row in rows]) for key in rows[0]}
    epochs = columns.pop("epoch") + 1  # CSVLogger counts from 0
    learning_rate = columns.pop("learning_rate", columns.pop("lr", None))
    names = sorted((key for key in columns if not key.startswith("val_")), key=lambda key: (key != "loss", key))
    panels = len(names) + (learning_rate is not None)
    ncols = 2 if panels == 4 else min(panels, 3)
    nrows = -(-panels // ncols)
    figure = Figure(figsize=(5 * ncols, 3.6 * nrows), layout="constrained")
    figure.suptitle(title)
    best = epochs[np.nanargmin(columns["val_loss"])] if "val_loss" in columns else None
    for index, name in enumerate(names):
        axes = _epoch_axes(figure, nrows, ncols, index + 1, _pretty(name), best)
        axes.plot(epochs, columns[name], "o-", markersize=3, label="train")
        if f"val_{name}" in columns:
            axes.plot(epochs, columns[f"val_{name}"], "o-", markersize=3, label="validation")
        axes.legend(fontsize="small")
    if learning_rate is not None:
        axes = _epoch_axes(figure, nrows, ncols, panels, "learning rate", best)
        axes.plot(epochs, learning_rate, "o-", markersize=3, color="tab:purple")
        axes.set_yscale("log")
    return _png(figure)


def _epoch_axes(figure: Figure, nrows: int, ncols: int, index: int, name: str, best: float | None):
    """A per-epoch panel (integer epoch ticks) marking the epoch with the lowest validation loss."""
    axes = figure.add_subplot(nrows, ncols, index)
    axes.set_title(name)
    axes.set_xlabel("Epoch")
    axes.set_ylabel(name)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if best is not None:
        axes.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"lowest val loss (epoch {best:.0f})")
    return axes


def save_training_history(history_path: str, png_path: str) -> None:
    """Reads a run's `history.csv` and writes its `training_history.png` (atomically, any filesystem)."""
    storage.write_bytes(png_path, training_history_png(storage.read_text(history_path)))
