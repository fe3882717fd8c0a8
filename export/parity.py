"""Parity: does the exported artifact classify like its source model?

The artifact's predictions come from the device's own code path: the artifact is written into
a bundle in a staging folder, loaded with `edge.bundle.load_bundle` + `edge.backends.load_backend`
and fed through `edge.preprocess.prepare_batch` (`staged_backend`), so the parity figure
describes the bundle that ships, contract checks and output dequantization included. There is
no second inference implementation in export/.

For each split: top-1 agreement with the source, accuracy and macro-F1 of both and their
deltas (in percentage points), and per-class recall / F1 deltas. An export whose accuracy
drops by more than `max_drop` points on any split is marked "failed-validation".
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from hemaedge.edge.backends import backend_for_file, backend_info, load_backend
from hemaedge.edge.bundle import load_bundle, sha256_file, write_bundle
from hemaedge.edge.preprocess import InputContract, prepare_batch

PASSED = "passed"
FAILED_VALIDATION = "failed-validation"
FAILED_TO_EXPORT = "failed-to-export"
NOT_VALIDATED = "not-validated"
DEFAULT_MAX_DROP = 1.0  # accuracy points


@contextlib.contextmanager
def staged_backend(artifact, *, classes, contract: InputContract, output: dict, threads: int = 2):
    """The artifact as a device runs it: bundled in a staging folder (checksummed and verified by
    `write_bundle`), loaded by `load_bundle` + `load_backend`; yields the edge Backend. The
    staging folder is removed afterwards; `.model_sha256` on the backend names the bytes measured."""
    artifact = Path(artifact)
    info = backend_info(backend_for_file(artifact))
    with tempfile.TemporaryDirectory(prefix="hemaedge-parity-") as tmp:
        staged = write_bundle(Path(tmp) / "bundle", {info.model_file: artifact}, model_file=info.model_file,
                              backend=info.name, model_format="parity-staging", classes=list(classes),
                              contract=contract, output=output, name="parity-staging")
        bundle = load_bundle(staged)
        backend = load_backend(bundle, threads=threads)
        backend.model_sha256 = sha256_file(bundle.model_path)
        yield backend


def device_probabilities(backend, images, contract: InputContract, batch_size: int = 32,
                         progress: str | None = None) -> np.ndarray:
    """uint8 RGB images -> class probabilities (N, C): `prepare_batch` then the back end's
    `predict`, exactly as `edge run` classifies crops."""
    from tqdm import tqdm

    chunks = []
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None):
        chunks.append(np.asarray(backend.predict(prepare_batch(images[s:s + batch_size], contract))))
    return np.concatenate(chunks) if chunks else np.zeros((0, backend.num_classes), np.float32)


def predict_artifact(artifact, images, *, classes, contract: InputContract, output: dict,
                     batch_size: int = 32) -> np.ndarray:
    """Probabilities of a model file on `images` through the device path (stage, load, predict)."""
    with staged_backend(artifact, classes=classes, contract=contract, output=output) as backend:
        return device_probabilities(backend, images, contract, batch_size)


def split_parity(labels, source_probs, artifact_probs, classes) -> dict:
    """Parity metrics of one split (accuracies as fractions, deltas in points)."""
    y = np.asarray(labels).reshape(-1)
    s_pred = np.asarray(source_probs).argmax(axis=1)
    a_pred = np.asarray(artifact_probs).argmax(axis=1)
    if len(y) == 0 or len(s_pred) != len(y) or len(a_pred) != len(y):
        raise ValueError(f"parity needs equal non-empty label/prediction arrays, got {len(y)}, {len(s_pred)}, {len(a_pred)}")
    ids = list(range(len(classes)))
    _, s_rec, s_f1, support = skm.precision_recall_fscore_support(y, s_pred, labels=ids, zero_division=0)
    _, a_rec, a_f1, _ = skm.precision_recall_fscore_support(y, a_pred, labels=ids, zero_division=0)
    s_acc, a_acc = float((s_pred == y).mean()), float((a_pred == y).mean())
    s_mf1, a_mf1 = float(np.mean(s_f1)), float(np.mean(a_f1))
    diff = np.abs(np.asarray(source_probs, np.float64) - np.asarray(artifact_probs, np.float64))
    return {
        "n": int(len(y)),
        "agreement": float((s_pred == a_pred).mean()),
        "source_accuracy": s_acc,
        "accuracy": a_acc,
        "accuracy_delta_points": 100.0 * (a_acc - s_acc),
        "source_macro_f1": s_mf1,
        "macro_f1": a_mf1,
        "macro_f1_delta_points": 100.0 * (a_mf1 - s_mf1),
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
        "per_class": {
            str(c): {"support": int(support[i]),
                     "recall": float(a_rec[i]), "recall_delta_points": 100.0 * float(a_rec[i] - s_rec[i]),
                     "f1": float(a_f1[i]), "f1_delta_points": 100.0 * float(a_f1[i] - s_f1[i])}
            for i, c in enumerate(classes)
        },
    }


def judge(splits: dict, max_drop: float = DEFAULT_MAX_DROP) -> dict:
    """Status over all splits: failed-validation when any split's accuracy drops > max_drop points."""
    if not splits:
        return {"status": NOT_VALIDATED, "max_drop_points": max_drop, "worst_drop_points": None, "reason": "no data given"}
    worst_split = min(splits, key=lambda k: splits[k]["accuracy_delta_points"])
    worst = -splits[worst_split]["accuracy_delta_points"]
    status = FAILED_VALIDATION if worst > max_drop + 1e-9 else PASSED
    reason = (f"accuracy drops {worst:.2f} points on {worst_split} (threshold {max_drop:g})"
              if status == FAILED_VALIDATION else "")
    return {"status": status, "max_drop_points": max_drop, "worst_drop_points": max(worst, 0.0) + 0.0, "reason": reason}


def manifest_metrics(splits: dict, verdict: dict) -> dict:
    """The `metrics` block of a bundle manifest: per split accuracy / macro-F1 + the parity detail."""
    out = {name: {"n": s["n"], "accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "agreement": s["agreement"]}
           for name, s in splits.items()}
    out["parity"] = {**verdict, "splits": splits}
    return out


def format_summary(splits: dict, verdict: dict) -> str:
    lines = []
    for name, s in splits.items():
        lines.append(f"{name:>5}: n={s['n']} accuracy {100 * s['accuracy']:.2f}% "
                     f"(source {100 * s['source_accuracy']:.2f}%, delta {s['accuracy_delta_points']:+.2f} pt), "
                     f"macro-F1 delta {s['macro_f1_delta_points']:+.2f} pt, agreement {100 * s['agreement']:.2f}%")
    lines.append(f"status: {verdict['status']}" + (f" ({verdict['reason']})" if verdict.get("reason") else ""))
    return "\n".join(lines)
