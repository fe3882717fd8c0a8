"""The training trade-off table (accuracy vs model size vs training time), read from the metrics
JSON files the training runs wrote, never retyped.

Reads every `*.json` under the given run folders (hybrid runs: per-head metrics files and
summaries; fine-tuning runs: metrics.json) and keeps those that carry a test accuracy. Field
names differ a little between trainers, so each value is looked up under the names the
trainers use (first match wins); the source file is kept in every row.
"""
from __future__ import annotations

import json
from pathlib import Path

# Files that are not training metrics (sidecars duplicate metrics.json; state is for resuming).
SKIP_NAMES = {"best.json", "last.json", "state.json", "manifest.json"}

TEST_ACC = ("test.accuracy", "metrics.test.accuracy", "test_accuracy", "test_acc")
TRAIN_ACC = ("train.accuracy", "metrics.train.accuracy", "train_accuracy", "train_acc")
TEST_F1 = ("test.macro_f1", "metrics.test.macro_f1", "test_macro_f1", "macro_f1")
SIZE_MB = ("head_mb", "size_mb", "model_size_mb", "head_size_mb", "model_mb")
SIZE_BYTES = ("model_bytes", "size_bytes", "head_bytes", "model_size_bytes")
DEPLOY_MB = ("deploy_mb", "fused_mb")
HEAD_S = ("head_train_s", "train_s", "head_seconds", "fit_seconds", "fit_s", "train_seconds", "training_time_s",
          "train_time_s", "timings.head_s", "timings.fit_s", "timings.train_s", "times.fit_s", "times.head_s")
BACKBONE_S = ("backbone_s", "extract_s", "backbone_seconds", "feature_seconds", "features_s", "extract_seconds",
              "feature_time_s", "timings.features_s", "timings.backbone_s", "times.features_s", "times.backbone_s")
BACKBONE = ("backbone", "config.backbone", "features.backbone")
HEAD = ("head", "classifier", "config.head")


def _get(d: dict, dotted: str):
    node = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _first(d: dict, keys, kind=(int, float)):
    for k in keys:
        v = _get(d, k)
        if isinstance(v, kind) and not isinstance(v, bool):
            return v
    return None


def _subset_note(d: dict, parent: dict) -> str | None:
    """'20 per class' / '500 images' when the run trained on part of the data (quick runs)."""
    for src in (d, parent):
        per_class = _get(src, "config.limit_per_class")
        if isinstance(per_class, int) and per_class:
            return f"{per_class} per class"
        limit = _get(src, "config.limit")
        if isinstance(limit, int) and limit:
            return f"{limit} images"
    return None


def row_from(d: dict, file: Path, run: str, parent: dict | None = None) -> dict | None:
    acc = _first(d, TEST_ACC)
    if acc is None:
        return None
    size = _first(d, SIZE_MB)
    if size is None:
        b = _first(d, SIZE_BYTES)
        size = b / 1e6 if b is not None else None
    head = _first(d, HEAD, str)
    deploy = _first(d, DEPLOY_MB)
    if head is None and _get(d, "epochs_trained") is not None:
        head = "fine-tuned"  # the whole network was trained: its size is the deployed size
        deploy = size
    variant = "/".join(str(d[k]) for k in ("preprocess", "augment") if isinstance(d.get(k), str)) or None
    return {"run": str(d.get("name") or d.get("run") or run), "file": str(file),
            "backbone": _first(d, BACKBONE, str), "head": head, "variant": variant,
            "train_accuracy": _first(d, TRAIN_ACC), "test_accuracy": float(acc),
            "test_macro_f1": _first(d, TEST_F1), "size_mb": size, "deploy_mb": deploy,
            "data_subset": _subset_note(d, parent or {}),
            "head_train_s": _first(d, HEAD_S), "backbone_s": _first(d, BACKBONE_S)}


def _candidates(data):
    """The dicts of a file: itself, or each entry of a list / of a 'rows'/'runs'/'heads' list or mapping."""
    if isinstance(data, list):
        return [x for x in data if isinstance(x, dict)]
    if not isinstance(data, dict):  # (hybrid metrics.json: one entry per head under "rows")
        return []
    if data.get("schema") == "hemaedge-bench":  # our own results are not training runs
        return []
    for key in ("rows", "runs", "heads", "results"):
        inner = data.get(key)
        if isinstance(inner, list):
            return [x for x in inner if isinstance(x, dict)]
        if isinstance(inner, dict) and all(isinstance(v, dict) for v in inner.values()):
            return [dict(v, name=v.get("name") or k) for k, v in inner.items()]
    if "classes" in data and "input" in data:  # a model's sidecar (best.json, fused_ann.json): repeats a run's metrics
        return []
    return [data]


def read_training_runs(folders, base: Path | None = None) -> list[dict]:
    """Rows from every metrics file under `folders` (sorted by file; duplicates dropped)."""
    rows, seen = [], set()
    for folder in map(Path, folders):
        if not folder.exists():
            raise FileNotFoundError(2, "no such training-runs folder", str(folder))
        files = [folder] if folder.is_file() else sorted(folder.rglob("*.json"))
        for f in files:
            if f.name in SKIP_NAMES or f.name.startswith("."):
                continue
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            shown = f.relative_to(base) if base and f.is_relative_to(base) else f
            run = str(f.parent.relative_to(folder)) if f.parent != folder and f.is_relative_to(folder) else f.stem
            for d in _candidates(data):
                row = row_from(d, shown, run, data if isinstance(data, dict) else None)
                if row is None:
                    continue
                key = (row["backbone"], row["head"], row["run"], round(row["test_accuracy"], 6))
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    return rows
