"""Result files of a benchmark: one JSON document (schema: benchmarks/schema.md), a CSV of the
per-model rows and a Markdown report. All are replaced atomically, so a reader (or a crash)
never sees half a file; the runner rewrites them after every row.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hemaedge.edge import machine as mach
from hemaedge.edge.atomic import atomic_write_text

SCHEMA_NAME = "hemaedge-bench"
SCHEMA_VERSION = 1
GOAL_SPEEDUP = 3.0  # the project's goal on this machine: int8 >= 3x faster than Keras predict ...
GOAL_MAX_DROP = 0.3  # ... with accuracy within 0.3 points

CSV_COLUMNS = [
    "id", "kind", "model", "format", "backend", "threads", "status", "reason", "size_mb", "accuracy",
    "macro_f1", "n_eval", "accuracy_source", "accuracy_delta_points", "latency.n", "latency.mean_ms",
    "latency.p50_ms", "latency.p90_ms", "latency.p99_ms", "latency.min_ms", "latency.max_ms",
    "vs_baseline.p50", "vs_baseline.mean", "vs_baseline.p99", "vs_baseline.speedup_p50", "throughput.batch",
    "throughput.images_per_s", "vs_baseline.throughput", "init.load_ms", "init.first_inference_ms",
    "init.total_ms", "preprocess_p50_ms", "peak_rss_mb", "peak_rss_with_eval_mb", "load_average_1m", "baseline_id",
    "bundle",
]


def atomic_write(path, text: str) -> Path:
    return atomic_write_text(path, text, newline="")


def document(*, rows, machine: dict, command: str, config: dict, pipeline=None, training=None,
             complete: bool = False) -> dict:
    return {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "complete": bool(complete),
            "command": command, "machine": machine, "config": config,
            "rows": [{k: v for k, v in r.items() if k != "spec"} for r in rows],
            "pipeline": list(pipeline or []), "training": list(training or []),
            "summary": summarize(rows)}


def summarize(rows) -> dict:
    """Status counts and the goal check: each int8 row against the Keras predict baseline."""
    counts = {}
    for r in rows:
        counts[r.get("status") or "pending"] = counts.get(r.get("status") or "pending", 0) + 1
    goals = []
    for r in rows:
        if r.get("kind") != "model" or "int8" not in str(r.get("format")) or not r.get("vs_baseline"):
            continue
        speedup = r["vs_baseline"].get("speedup_p50")
        delta = _baseline_accuracy_delta(rows, r)
        met = (speedup is not None and speedup >= GOAL_SPEEDUP and delta is not None and delta >= -GOAL_MAX_DROP
               and r.get("status") == "passed")
        goals.append({"row": r["id"], "threads": r["threads"], "speedup_p50": speedup,
                      "speedup_p50_vs_predict_on_batch": r["vs_baseline"].get("speedup_p50_vs_predict_on_batch"),
                      "accuracy_delta_points": delta, "status": r.get("status"), "met": bool(met)})
    return {"status_counts": counts, "goal": {"speedup_at_least": GOAL_SPEEDUP,
                                              "accuracy_within_points": GOAL_MAX_DROP, "rows": goals}}


def _baseline_accuracy_delta(rows, r):
    base = next((b for b in rows if b.get("id") == r.get("baseline_id")), None)
    if base is None or base.get("accuracy") is None or r.get("accuracy") is None or base.get("n_eval") != r.get("n_eval"):
        return None
    return 100.0 * (r["accuracy"] - base["accuracy"])


def flatten(row: dict) -> dict:
    out = {}
    for col in CSV_COLUMNS:
        if "." in col:
            head, key = col.split(".", 1)
            out[col] = (row.get(head) or {}).get(key)
        else:
            out[col] = row.get(col)
    return out


def to_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in flatten(r).items()})
    return buf.getvalue()


# ----------------------------------------------------------------------------- Markdown


def _f(v, fmt="{:.2f}", none="—"):
    return none if v is None else fmt.format(v)


def _pct(v):
    return _f(None if v is None else 100 * v)


def md_table(headers, lines) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in line) + " |" for line in lines]
    return out


def to_markdown(doc: dict, plots: dict | None = None) -> str:
    m, cfg = doc["machine"], doc["config"]
    out = [f"# hemaedge benchmark: {cfg.get('name', '')}", "",
           f"- **command**: `{doc['command']}`",
           f"- **date**: {m.get('date')}",
           f"- **machine**: {mach.one_line(m)}",
           f"- **libraries**: " + ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items()),
           f"- **preset**: {cfg.get('preset')}, threads {cfg.get('threads')}; timing: {cfg.get('timing')}; "
           f"throughput batch {cfg.get('throughput_batch')}",
           f"- **test data**: {cfg.get('data') or 'none given (accuracy not measured)'}"
           + (f", limit {cfg['limit']} images" if cfg.get("limit") else ""),
           f"- **complete**: {'yes' if doc.get('complete') else 'no (run in progress or interrupted)'}", ""]
    out += ["## Per-model, per-format table", "",
            "Per-cell latency at batch 1 (model call only: input tensor in, probabilities out), ms. "
            "`× Keras` = Keras fp32 `model.predict` p50 / this row's p50 (the project's baseline), `× graph` = the same "
            "against Keras `predict_on_batch` (compiled graph without predict's per-call tf.data set-up); "
            "same model, thread count and run.", ""]
    headers = ["Model", "Format", "Back end", "Threads", "Status", "Size (MB)", "Acc. (%)", "Macro F1",
               "p50", "p90", "p99", "mean", "× Keras", "× graph", "Throughput (img/s)", "Init (ms)", "Peak RSS (MB)"]
    lines = []
    for r in doc["rows"]:
        lat, tp, vs = r.get("latency") or {}, r.get("throughput") or {}, r.get("vs_baseline") or {}
        lines.append([r["model"], r["format"], r["backend"], r["threads"] if r["threads"] is not None else "—",
                      r["status"] or "pending", _f(r.get("size_mb"), "{:.3f}"), _pct(r.get("accuracy")),
                      _f(r.get("macro_f1"), "{:.4f}"), _f(lat.get("p50_ms"), "{:.3f}"), _f(lat.get("p90_ms"), "{:.3f}"),
                      _f(lat.get("p99_ms"), "{:.3f}"), _f(lat.get("mean_ms"), "{:.3f}"),
                      _f(vs.get("speedup_p50"), "{:.2f}×"), _f(vs.get("speedup_p50_vs_predict_on_batch"), "{:.2f}×"),
                      _f(tp.get("images_per_s"), "{:.1f}") + (f" (b{tp['batch']})" if tp else ""),
                      _f((r.get("init") or {}).get("total_ms"), "{:.0f}"), _f(r.get("peak_rss_mb"), "{:.0f}")])
    out += md_table(headers, lines)
    notes = [r for r in doc["rows"] if r.get("reason") or r.get("note")]
    if notes:
        out += ["", "Reasons and notes:", ""] + [
            f"- `{r['id']}` **{r['status']}**: " + "; ".join(dict.fromkeys(x for x in (r.get("reason"), r.get("note")) if x))
            for r in notes]
    shared = [r for r in doc["rows"] if r.get("accuracy_source") not in (None, "measured")]
    if shared:
        out += ["", "Accuracy is measured once per model and format (it does not depend on the thread count); "
                "rows marked with another source reuse it: "
                + ", ".join(f"`{r['id']}` ({r['accuracy_source']})" for r in shared) + "."]
    goal = doc["summary"]["goal"]
    if goal["rows"]:
        out += ["", f"## Goal: int8 at least {goal['speedup_at_least']:g}× faster than Keras fp32 predict, "
                f"accuracy within {goal['accuracy_within_points']:g} points", ""]
        out += md_table(["Row", "Speed-up vs predict (p50)", "Speed-up vs predict_on_batch", "Δ accuracy (points)",
                         "Status", "Met"],
                        [[g["row"], _f(g["speedup_p50"], "{:.2f}×"),
                          _f(g.get("speedup_p50_vs_predict_on_batch"), "{:.2f}×"),
                          _f(g["accuracy_delta_points"], "{:+.2f}"), g.get("status", "—"),
                          "yes" if g["met"] else "no"] for g in goal["rows"]])
    if doc.get("pipeline"):
        out += ["", "## Per-frame pipeline (segment + classify every cell)", ""]
        out += pipeline_markdown(doc["pipeline"])
    if doc.get("training"):
        out += ["", "## Training trade-off (read from the training runs' metrics files)", ""]
        out += training_markdown(doc["training"])
    if plots:
        out += ["", "## Plots", ""] + [f"![{k}]({Path(v).name})" for k, v in plots.items()]
    out += ["", "Schema of the JSON file: benchmarks/schema.md. Statuses: passed / failed-validation / failed / "
            "skipped (see benchmarks/status.py).", ""]
    return "\n".join(out)


def pipeline_markdown(rows) -> list[str]:
    stages = []
    for r in rows:
        for s in (r.get("stages") or {}):
            if s not in stages:
                stages.append(s)
    headers = ["Model", "Format", "Threads", "Status", "Frames", "Cells", "FPS"] + \
              [f"{s} p50/p99 (ms)" for s in stages] + ["Peak RSS (MB)"]
    lines = []
    for r in rows:
        st = r.get("stages") or {}
        lines.append([r.get("model"), r.get("format"), r.get("threads"), r.get("status"), _f(r.get("frames"), "{}"),
                      _f(r.get("cells"), "{}"), _f(r.get("fps"), "{:.2f}")]
                     + [f"{_f((st.get(s) or {}).get('p50_ms'), '{:.1f}')} / {_f((st.get(s) or {}).get('p99_ms'), '{:.1f}')}"
                        for s in stages] + [_f(r.get("peak_rss_mb"), "{:.0f}")])
    out = md_table(headers, lines)
    sources = sorted({str(r["frames_source"]) for r in rows if r.get("frames_source")})
    if sources:
        out += ["", f"Frames: evenly picked from {', '.join(sources)} (one more frame before them is a warm-up "
                "and not counted); `read` = decoding the frame file, `total` = read + segment + preprocess + inference."]
    notes = [r for r in rows if r.get("reason")]
    out += [""] + [f"- `{r.get('model')}|{r.get('format')}|t{r.get('threads')}` **{r.get('status')}**: {r['reason']}"
                   for r in notes] if notes else []
    return out


def training_markdown(rows) -> list[str]:
    headers = ["Run", "Backbone", "Head", "Input / augment", "Training data", "Train acc. (%)", "Test acc. (%)", "Macro F1",
               "Head or model (MB)", "Deployed (MB)", "Training (s)", "Backbone features (s)", "Source file"]
    lines = [[r.get("run"), r.get("backbone") or "—", r.get("head") or "—", r.get("variant") or "—",
              r.get("data_subset") or "all",
              _pct(r.get("train_accuracy")), _pct(r.get("test_accuracy")), _f(r.get("test_macro_f1"), "{:.4f}"),
              _f(r.get("size_mb"), "{:.2f}"), _f(r.get("deploy_mb"), "{:.2f}"),
              _f(r.get("head_train_s"), "{:.1f}"), _f(r.get("backbone_s"), "{:.1f}"), f"`{r.get('file')}`"]
             for r in rows]
    return md_table(headers, lines)


def write_outputs(stem, doc: dict, plots: dict | None = None) -> dict:
    """Write <stem>.json, <stem>.csv and <stem>.md; returns their paths."""
    stem = Path(stem)
    paths = {"json": stem.with_name(stem.name + ".json"), "csv": stem.with_name(stem.name + ".csv"),
             "md": stem.with_name(stem.name + ".md")}
    atomic_write(paths["json"], json.dumps(doc, indent=1, default=str) + "\n")
    atomic_write(paths["csv"], to_csv(doc["rows"]))
    atomic_write(paths["md"], to_markdown(doc, plots))
    return paths


# ----------------------------------------------------------------------------- README headline


def headline(doc: dict, threads: int | None = None, formats=("keras-fp32-predict", "keras-fp32-predict_on_batch",
                                                           "tflite-fp32", "tflite-int8")) -> str:
    """A short table for a README: size, accuracy, per-cell and per-frame latency of the given
    formats (default: the int8 model next to fp32 and the Keras baselines) at one thread count
    (default: the largest measured), with the date, machine and command it came from."""
    rows = [r for r in doc["rows"] if r.get("latency")]
    if threads is None:
        threads = max((r["threads"] for r in rows), default=None)
    frames = {(p["model"], p["format"]): p for p in doc.get("pipeline") or [] if p.get("status") == "passed"}
    lines = []
    for fmt in formats:
        for r in rows:
            if r["format"] != fmt or r["threads"] != threads:
                continue
            p = frames.get((r["model"], r["format"])) or {}
            total = (p.get("stages") or {}).get("total") or {}
            vs = r.get("vs_baseline") or {}
            lines.append([r["model"], r["format"], r["status"], _f(r.get("size_mb"), "{:.2f}"), _pct(r.get("accuracy")),
                          _f(r["latency"]["p50_ms"], "{:.2f}"), _f(r["latency"]["p99_ms"], "{:.2f}"),
                          _f(vs.get("speedup_p50"), "{:.1f}×"), _f(total.get("p50_ms"), "{:.1f}"),
                          _f(p.get("fps"), "{:.1f}")])
    m, cfg = doc["machine"], doc["config"]
    if cfg.get("accuracy") == "manifest":
        acc = "test accuracy as recorded by the export's parity check (bundle manifests)"
    else:
        acc = f"test accuracy on {cfg.get('data') or 'no test data'}" + (
            f" ({cfg['limit']} images)" if cfg.get("limit") else "")
    frame_threads = sorted({p["threads"] for p in frames.values()})
    out = [f"Measured on {mach.one_line(m)}; per cell at {threads} thread(s); {acc}.", ""]
    out += md_table(["Model", "Format", "Status", "Size (MB)", "Test acc. (%)", "Per cell p50 (ms)", "p99 (ms)",
                     "vs Keras predict",
                     f"Per frame p50 (ms, {','.join(map(str, frame_threads)) or '—'} threads)", "Frames/s"], lines)
    out += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(out)
