"""Evaluation shared by all training code: metrics, bootstrap interval, confusion matrix, files.

Every trainer (hybrid heads, fine-tuning, ensembles) reports through `compute_metrics`, so the
numbers in every table are computed the same way (scikit-learn metrics, macro averages).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn import metrics as skm

from hemaedge.edge.atomic import atomic_path, atomic_write_json, atomic_write_text


def compute_metrics(y_true, proba, class_names: Sequence[str], *, bootstrap: int = 1000,
                    seed: int = 42) -> dict:
    """Metrics of a classifier from true labels (N,) and class probabilities (N, C).

    Returns accuracy, macro precision/recall/F1, Cohen's kappa, macro one-vs-rest ROC AUC
    (None when not computable, e.g. a class absent from y_true), a bootstrap 95% interval of
    accuracy (percentile method, `bootstrap` resamples; None when bootstrap=0), per-class
    precision/recall/F1/support, the confusion matrix (rows = true, columns = predicted) and n.
    """
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = len(class_names)
    if proba.ndim != 2 or proba.shape != (len(y_true), n_classes):
        raise ValueError(f"proba must have shape ({len(y_true)}, {n_classes}), got {proba.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on an empty set")
    labels = list(range(n_classes))
    y_pred = proba.argmax(axis=1)
    correct = (y_pred == y_true)

    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(correct.mean()),
        "macro_precision": float(np.mean(p)),
        "macro_recall": float(np.mean(r)),
        "macro_f1": float(np.mean(f)),
        "kappa": _finite(skm.cohen_kappa_score(y_true, y_pred, labels=labels)),
        "roc_auc_ovr": _roc_auc(y_true, proba, labels),
        "accuracy_ci95": _bootstrap_ci(correct, bootstrap, seed),
        "per_class": {
            str(name): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                        "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "ece": expected_calibration_error(y_true, proba),
        "balanced_accuracy": float(np.mean(r)),
    }
    return out


def expected_calibration_error(y_true, proba, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (Guo et al. 2017): the
    sample-weighted mean |accuracy - confidence| over `bins` equal-width confidence bins."""
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities: softmax(log p / T), as the device applies
    `output.temperature` (`hemaedge.edge.preprocess.output_probabilities`)."""
    from hemaedge.edge.preprocess import output_probabilities

    return output_probabilities(np.asarray(proba, dtype=np.float32),
                                {"kind": "probabilities", "temperature": float(temperature)})


def fit_temperature(y_true, proba, bounds=(0.05, 20.0)) -> float:
    """The temperature minimising the negative log-likelihood of `proba` (validation split)."""
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true).astype(int).reshape(-1)
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-30, None))

    def nll(log_t):
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(z)), y_true] - np.log(np.exp(z).sum(axis=1))).mean())

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _roc_auc(y_true, proba, labels) -> float | None:
    # One-vs-rest needs every class present in y_true; otherwise AUC is undefined.
    if len(np.unique(y_true)) != len(labels):
        return None
    p = proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)
    try:
        return _finite(skm.roc_auc_score(y_true, p, multi_class="ovr", average="macro", labels=labels))
    except ValueError:
        return None


def _bootstrap_ci(correct: np.ndarray, n_boot: int, seed: int) -> list[float] | None:
    if not n_boot:
        return None
    rng = np.random.default_rng(seed)
    n = len(correct)
    c = correct.astype(np.float64)
    accs = np.empty(n_boot)
    for start in range(0, n_boot, 100):  # chunks keep memory small for large test sets
        stop = min(start + 100, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        accs[start:stop] = c[idx].mean(axis=1)
    lo, hi = np.percentile(accs, [2.5, 97.5])
    return [float(lo), float(hi)]


def plot_confusion_matrix(cm, class_names: Sequence[str], path, title: str | None = None) -> Path:
    """Confusion matrix PNG: counts in each cell, colour = row-normalised recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n), dpi=120)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels=[str(c) for c in class_names], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=[str(c) for c in class_names], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path, **savefig_kwargs) -> Path:
    """Write a matplotlib figure atomically (never a half-written PNG beside the tables) and release it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    plt.close(fig)
    return path


def write_json(path, obj) -> Path:
    """Write JSON atomically (temporary file in the same folder, then os.replace)."""
    return atomic_write_json(path, obj, indent=2, default=_json_default)


def write_text(path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write_text(path, text)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def metrics_markdown(rows: Sequence[dict], columns) -> str:
    """A Markdown table. `columns` is a list of keys or of (key, header) pairs; floats get 4 digits,
    None shows as an en dash, lists (intervals) as 'lo–hi'."""
    cols = [(c, c) if isinstance(c, str) else tuple(c) for c in columns]
    lines = ["| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"{float(v[0]):.4f}–{float(v[1]):.4f}"
    return str(v).replace("|", "\\|")


__all__ = ["compute_metrics", "plot_confusion_matrix", "write_json", "write_text", "metrics_markdown"]
