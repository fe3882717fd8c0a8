"""Plan and run a benchmark: one row per model x format x back end x thread count.

Each row is measured in its own process (`python -m hemaedge.benchmarks.worker`), so peak
memory and thread settings of one row never leak into another. Rows are written to the
result files after every row (atomically), every planned row ends with a status (see
`status.py`), and the Keras fp32 source model is measured in the same run as the baseline
every latency is divided by.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hemaedge.benchmarks import presets, stats
from hemaedge.benchmarks import status as st
from hemaedge.edge.bundle import BundleError, MANIFEST_NAME, read_manifest, sha256_file
from hemaedge.edge.manifest import Manifest

logger = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    targets: list[Path]
    export_tables: list[Path] = field(default_factory=list)
    preset: str = "desktop"
    threads: tuple[int, ...] | None = None  # None: the preset's
    formats: tuple[str, ...] | None = None  # only these formats (others: skipped)
    keras: list[Path] = field(default_factory=list)
    keras_calls: tuple[str, ...] = ("predict", "predict_on_batch")
    data: Path | None = None
    limit: int | None = None
    timing: dict = field(default_factory=lambda: {"warmup": 10, "min_runs": 100, "min_seconds": 1.0,
                                                  "max_seconds": 10.0})
    throughput_batch: int = 32
    max_drop: float = st.DEFAULT_MAX_DROP
    row_timeout: float = 1800.0
    frames: Path | None = None
    frames_limit: int = 20
    accuracy: str = "measure"  # measure | manifest (reuse the export's parity metrics where present)
    progress: bool = True

    def thread_list(self) -> tuple[int, ...]:
        return tuple(self.threads) if self.threads else presets.preset_threads(self.preset)


# ----------------------------------------------------------------------------- discovery


def _looks_like_export_table(data) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("rows"), list)
            and all(isinstance(r, dict) and "format" in r and "status" in r for r in data["rows"]))


def read_export_table(table: Path, default_model: str) -> list[dict]:
    """Formats an export table (`hemaedge export all --table`) lists without a bundle."""
    try:
        data = json.loads(Path(table).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{table}: export table is not valid JSON ({exc})") from None
    if not _looks_like_export_table(data):
        raise BundleError(f"{table}: not an export table (expected {{\"rows\": [{{\"format\", \"status\", ...}}]}})")
    model = (data.get("meta") or {}).get("model") or default_model
    return [{"model": model, "format": r["format"], "table": str(table), "error": r.get("error") or r["status"]}
            for r in data["rows"] if not r.get("bundle") and r["status"] != st.PASSED]


def discover(targets, export_tables=()) -> tuple[list[dict], list[dict]]:
    """Bundles under the targets, plus export-table rows of formats that never became a bundle.

    A target is a bundle folder, or a folder of bundles (what `hemaedge export all` writes,
    with its export table). Returns (bundles, failed_exports); a bundle whose manifest cannot
    be read is still returned (with `error`) so it gets a `failed` row.
    """
    bundles, failed_exports, seen = [], [], set()
    for target in map(Path, targets):
        if not target.exists():
            raise FileNotFoundError(2, "no such bundle or folder", str(target))
        if (target / MANIFEST_NAME).is_file():
            dirs = [target]
        else:
            dirs = sorted(d for d in target.iterdir() if d.is_dir() and (d / MANIFEST_NAME).is_file())
            for table in sorted(target.glob("*.json")):
                try:
                    failed_exports += read_export_table(table, target.name)
                except (OSError, BundleError):
                    continue  # some other JSON file
            if not dirs and not failed_exports:
                raise BundleError(f"{target}: neither a bundle (no {MANIFEST_NAME}) nor a folder of bundles")
        for d in dirs:
            key = d.resolve()
            if key in seen:
                continue
            seen.add(key)
            bundles.append(describe_bundle(d))
    for table in export_tables:
        if not Path(table).is_file():
            raise FileNotFoundError(2, "no such export table", str(table))
        failed_exports += read_export_table(Path(table), Path(table).stem)
    return bundles, failed_exports


_FORMAT_SUFFIX = re.compile(r"[-_](tflite|onnx|tensorrt|trt)([-_][a-z0-9]+)*$")


def describe_bundle(path: Path) -> dict:
    """What the planner needs from a bundle, read from its manifest (checksums are verified later,
    in the measuring process, so a damaged bundle still gets a row)."""
    info = {"path": str(path), "model": path.name, "format": path.name, "backend": "?", "error": None}
    try:
        m = read_manifest(path)
    except BundleError as exc:
        info["error"] = str(exc)
        return info
    typed = Manifest.from_dict(m)
    fmt = typed.model.format or path.name
    name = typed.name or path.name
    # export names bundles "<model>-<format>" (a TensorRT engine built on the device from an ONNX
    # bundle: "<model>-onnx-fp32-trt-fp16"): the model name groups a model's formats and baselines
    stripped = _FORMAT_SUFFIX.sub("", name)
    name = stripped or name
    info.update(model=name, format=fmt, backend=typed.model.backend, manifest=m, size_bytes=typed.size_bytes,
                source_sha256=typed.section("source").get("sha256"))
    return info


# ----------------------------------------------------------------------------- planning


def row_id(r: dict) -> str:
    return f"{r['model']}|{r['format']}|{r['backend']}|t{r['threads']}"


def _new_row(kind, model, fmt, backend, threads, **kw) -> dict:
    row = {"id": None, "kind": kind, "model": model, "format": fmt, "backend": backend, "threads": threads,
           "status": None, "reason": "", "size_mb": None, "accuracy": None, "macro_f1": None, "n_eval": None,
           "accuracy_source": None, "latency": None, "vs_baseline": None, "throughput": None, "init": None,
           "peak_rss_mb": None, "bundle": None, "baseline_id": None}
    row.update(kw)
    row["id"] = row_id(row)
    return row


def plan(cfg: BenchConfig, bundles: list[dict], failed_exports: list[dict]) -> list[dict]:
    """Rows in run order; each carries a `spec` for the worker or is already decided (skipped/failed)."""
    threads = cfg.thread_list()
    allowed = presets.PRESETS[cfg.preset]["backends"]
    rows: list[dict] = []
    acc_spec = ({"data": str(cfg.data), "split": "test", "limit": cfg.limit, "progress": cfg.progress}
                if cfg.data else None)
    base = {"timing": cfg.timing, "throughput_batch": cfg.throughput_batch,
            "sample_data": str(cfg.data) if cfg.data else None}

    # Baselines first: every other row is divided by them.
    models = {}
    for b in bundles:
        if b.get("manifest"):
            models.setdefault(b["model"], b)
    for name, b in models.items():
        keras_path, note = _keras_for(cfg, b)
        m = b["manifest"]
        contract = dict(m["input"], dtype="float32", quant_scale=None, quant_zero_point=None)
        out_kind = (m.get("output") or {}).get("kind", "probabilities")
        for call in cfg.keras_calls:
            for t in threads:
                row = _new_row("baseline", name, f"keras-fp32-{call}", "keras", t, keras=str(keras_path) if keras_path else None,
                               note=note)
                if keras_path is not None:
                    row["size_mb"] = keras_path.stat().st_size / 1e6
                why = (presets.missing_tool("keras") or (None if keras_path else note))
                known = _manifest_accuracy(cfg, b, source=True)
                if known:
                    row.update(known)
                if why:
                    row.update(status=st.SKIPPED, reason=why)
                else:
                    row["spec"] = {**base, "kind": "keras", "keras": str(keras_path), "threads": t, "call": call,
                                   "contract": contract, "classes": m["classes"], "output": {"kind": out_kind},
                                   "accuracy": acc_spec if t == threads[0] and not known else None}
                rows.append(row)

    for b in bundles:
        for t in threads:
            row = _new_row("model", b["model"], b["format"], b["backend"], t, bundle=b["path"])
            if b.get("size_bytes"):
                row["size_mb"] = b["size_bytes"] / 1e6
            if b.get("error"):
                row.update(status=st.FAILED, reason=f"bundle: {b['error']}")
            elif cfg.formats and b["format"] not in cfg.formats:
                row.update(status=st.SKIPPED, reason=f"format not selected (--formats {','.join(cfg.formats)})")
            elif b["backend"] not in allowed:
                row.update(status=st.SKIPPED, reason=f"back end {b['backend']} is not in the '{cfg.preset}' preset")
            elif presets.missing_tool(b["backend"]):
                row.update(status=st.SKIPPED, reason=presets.missing_tool(b["backend"]))
            else:
                known = _manifest_accuracy(cfg, b)
                if known:
                    row.update(known)
                row["spec"] = {**base, "kind": "bundle", "bundle": b["path"], "threads": t,
                               "accuracy": acc_spec if t == threads[0] and not known else None}
            rows.append(row)
    for f in failed_exports:
        backend = f["format"].split("-")[0] if f["format"].split("-")[0] in presets.TOOLS else "?"
        missing = presets.missing_tool(backend) if backend != "?" else None
        # a TensorRT engine cannot be built on a machine without TensorRT: not run here, not broken
        status = st.SKIPPED if missing else st.FAILED
        rows.append(_new_row("model", f["model"], f["format"], backend, None, status=status,
                             reason=f"export failed ({f['table']}): {f['error']}"
                                    + (f"; {missing}" if missing else "")))
    seen: dict[str, int] = {}
    for row in rows:  # two bundles of one name (e.g. two exports of a model): keep both, told apart
        n = seen[row["id"]] = seen.get(row["id"], 0) + 1
        if n > 1:
            row["id"] = f"{row['id']}#{n}"
    return rows


def _manifest_accuracy(cfg: BenchConfig, bundle: dict, source: bool = False) -> dict | None:
    """With --accuracy manifest: the test accuracy the export's parity check recorded in the
    bundle (of the artifact, or with source=True of the Keras model it came from), said as such."""
    if cfg.accuracy != "manifest" or not bundle.get("manifest"):
        return None
    m = Manifest.from_dict(bundle["manifest"])
    test, artifact = m.parity_split("test"), m.split_metrics("test")
    if source:
        acc, f1 = test.get("source_accuracy"), test.get("source_macro_f1")
    else:
        acc, f1 = artifact.get("accuracy"), artifact.get("macro_f1")
    n = test.get("n") or artifact.get("n")
    if acc is None:
        return None
    data = m.section("validation").get("data") or {}
    return {"accuracy": float(acc), "macro_f1": f1, "n_eval": n,
            "accuracy_source": f"manifest: export parity check on {data.get('data', 'test')} test split"
                               + (f" (from bundle {Path(bundle['path']).name})" if source else "")}


def _keras_for(cfg: BenchConfig, bundle: dict) -> tuple[Path | None, str]:
    """The Keras source of a bundle's model: a --keras file whose sha256 matches the manifest's
    source, else the only --keras file given (noted), else none."""
    if not cfg.keras:
        return None, "no Keras source model given (--keras MODEL.keras)"
    want = bundle.get("source_sha256")
    for k in cfg.keras:
        if want and sha256_file(k) == want:
            return Path(k), ""
    if len(cfg.keras) == 1:
        return Path(cfg.keras[0]), ("" if not want else "the --keras file's sha256 differs from the bundle's source")
    return None, f"none of the --keras files has the bundle's source sha256 {str(want)[:12]}"


# ----------------------------------------------------------------------------- running


def run_worker(spec: dict, timeout: float) -> dict:
    """Run one row in a fresh Python process; its JSON answer, or a failure result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "hemaedge.benchmarks.worker"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "stage": "run", "error": f"timed out after {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"ok": False, "stage": "run", "error": f"measuring process exited with code {proc.returncode}: {tail}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"ok": False, "stage": "run", "error": f"unreadable answer from the measuring process: {lines[-1][:200]}"}


def apply_result(row: dict, result: dict) -> None:
    """Copy a worker's measurements into the row."""
    row["wall_s"] = result.get("wall_s")
    row["load_average_1m"] = result.get("load_average_1m")
    row["peak_rss_mb"] = result.get("peak_rss_mb")
    for key in ("latency", "latency_samples_ms", "preprocess_p50_ms", "throughput", "init", "peak_rss_with_eval_mb"):
        if key in result:
            row[key] = result[key]
    acc = result.get("accuracy")
    if acc:
        row.update(accuracy=acc["accuracy"], macro_f1=acc["macro_f1"], n_eval=acc["n"], accuracy_source="measured",
                   labels_matched=acc.get("labels_matched"))
    if not result.get("ok"):
        row["error"] = result.get("error")
        row["error_stage"] = result.get("stage")


def _share_accuracy(rows: list[dict], row: dict) -> None:
    """Accuracy does not depend on the thread count: rows after the first reuse its score."""
    if row["accuracy"] is not None:
        return
    for other in rows:
        if (other is not row and other["accuracy"] is not None and other["model"] == row["model"]
                and other["format"] == row["format"] and other["backend"] == row["backend"]
                and other["kind"] == row["kind"] and other.get("bundle") == row.get("bundle")
                and other.get("keras") == row.get("keras")):
            row.update(accuracy=other["accuracy"], macro_f1=other["macro_f1"], n_eval=other["n_eval"],
                       accuracy_source=f"threads={other['threads']} row")
            return


def _reference(rows: list[dict], row: dict, cfg: BenchConfig) -> tuple[float | None, str]:
    """The accuracy a model row is validated against (see status.py)."""
    for b in rows:
        if (b["kind"] == "baseline" and b["model"] == row["model"] and b["accuracy"] is not None
                and b["n_eval"] == row["n_eval"]):
            if str(b.get("accuracy_source", "")).startswith("manifest"):
                return b["accuracy"], "the Keras fp32 source's accuracy recorded at export"
            return b["accuracy"], f"Keras fp32 ({b['format']}) in this run"
    m = _manifest(row)
    if not m:
        return None, ""
    m = Manifest.from_dict(m)
    test = m.parity_split("test")
    if test.get("source_accuracy") is not None and test.get("n") == row["n_eval"]:
        return test["source_accuracy"], "the source accuracy recorded at export"
    # a TensorRT engine built from an ONNX bundle carries that bundle's export metrics
    onnx_test = ((m.section("source").get("onnx_metrics") or {}).get("test") or {})
    if onnx_test.get("accuracy") is not None and onnx_test.get("n") == row["n_eval"]:
        return onnx_test["accuracy"], "the ONNX model's accuracy recorded at export"
    return None, ""


def _manifest(row: dict) -> dict:
    if not row.get("bundle"):
        return {}
    try:
        return read_manifest(row["bundle"])
    except BundleError:
        return {}


def finish_row(rows: list[dict], row: dict, result: dict | None, cfg: BenchConfig) -> None:
    apply_result(row, result or {})
    _share_accuracy(rows, row)
    ref, ref_name = (None, "")
    parity = None
    if row["kind"] == "model":
        ref, ref_name = _reference(rows, row, cfg)
        m = _manifest(row)
        parity = m.get("validation") or (m.get("metrics") or {}).get("parity")
    status, reason = st.decide(result, accuracy=row["accuracy"], reference=ref, reference_name=ref_name,
                               max_drop=cfg.max_drop, manifest_parity=parity)
    row.update(status=status, reason=reason)
    if ref is not None and row["accuracy"] is not None:
        row["accuracy_delta_points"] = 100.0 * (row["accuracy"] - ref)
        row["accuracy_reference"] = ref_name


def attach_baselines(rows: list[dict]) -> None:
    """Every measured row's latency as a ratio to the Keras `model.predict` row of the same model
    and thread count (the issue's baseline), plus the speed-up (baseline p50 / row p50) and the
    speed-up over Keras `predict_on_batch` (the compiled graph without predict's per-call set-up)."""
    for row in rows:
        if not row.get("latency"):
            continue
        base = next((b for b in rows if b["kind"] == "baseline" and b["model"] == row["model"]
                     and b["threads"] == row["threads"] and b["format"] == "keras-fp32-predict"
                     and b.get("latency")), None)
        if base is None or base is row:
            continue
        ratios = stats.latency_ratios(row["latency"], base["latency"])
        ratios["speedup_p50"] = stats.ratio(base["latency"]["p50_ms"], row["latency"]["p50_ms"])
        tp, btp = row.get("throughput") or {}, base.get("throughput") or {}
        ratios["throughput"] = stats.ratio(tp.get("images_per_s"), btp.get("images_per_s"))
        graph = next((b for b in rows if b["kind"] == "baseline" and b["model"] == row["model"]
                      and b["threads"] == row["threads"] and b["format"] == "keras-fp32-predict_on_batch"
                      and b.get("latency")), None)
        ratios["speedup_p50_vs_predict_on_batch"] = (
            stats.ratio(graph["latency"]["p50_ms"], row["latency"]["p50_ms"]) if graph and graph is not row else None)
        row["vs_baseline"] = ratios
        row["baseline_id"] = base["id"]


def execute(rows: list[dict], cfg: BenchConfig, *, on_update: Callable[[list[dict]], None] | None = None,
            log: Callable[[str], None] | None = None) -> list[dict]:
    """Measure every row that has a spec, in order; on_update(rows) after each one."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    from tqdm import tqdm

    todo = [r for r in rows if r.get("spec") and r["status"] is None]
    bar = tqdm(todo, desc="bench", unit="row", disable=not cfg.progress)
    try:
        for row in bar:
            bar.set_postfix_str(row["id"])
            t0 = time.perf_counter()
            result = run_worker(row.pop("spec"), cfg.row_timeout)
            finish_row(rows, row, result, cfg)
            attach_baselines(rows)
            p50 = (row.get("latency") or {}).get("p50_ms")
            log(f"{row['id']}: {row['status']}" + (f", p50 {p50:.2f} ms" if p50 else "")
                + (f" ({row['reason']})" if row["reason"] else "") + f" [{time.perf_counter() - t0:.0f} s]")
            if on_update:
                on_update(rows)
    finally:
        for row in rows:  # interrupted: what did not run is said, not dropped
            if row["status"] is None:
                row.pop("spec", None)
                row.update(status=st.SKIPPED, reason="the run was interrupted before this row")
        if on_update:
            on_update(rows)
    return rows


# ----------------------------------------------------------------------------- per-frame pipeline


def plan_pipeline(cfg: BenchConfig, bundles: list[dict]) -> list[dict]:
    """One per-frame row per runnable bundle, at the largest thread count (a device runs flat out)."""
    if not cfg.frames:
        return []
    t = max(cfg.thread_list())
    allowed = presets.PRESETS[cfg.preset]["backends"]
    rows = []
    for b in bundles:
        row = {"model": b["model"], "format": b["format"], "backend": b["backend"], "threads": t,
               "status": None, "reason": "", "frames": None, "cells": None, "fps": None, "stages": None,
               "peak_rss_mb": None, "bundle": b["path"]}
        if b.get("error"):
            row.update(status=st.FAILED, reason=f"bundle: {b['error']}")
        elif cfg.formats and b["format"] not in cfg.formats:
            row.update(status=st.SKIPPED, reason="format not selected (--formats)")
        elif b["backend"] not in allowed:
            row.update(status=st.SKIPPED, reason=f"back end {b['backend']} is not in the '{cfg.preset}' preset")
        elif presets.missing_tool(b["backend"]):
            row.update(status=st.SKIPPED, reason=presets.missing_tool(b["backend"]))
        else:
            row["spec"] = {"kind": "pipeline", "bundle": b["path"], "threads": t, "frames": str(cfg.frames),
                           "frames_limit": cfg.frames_limit}
        rows.append(row)
    return rows


def execute_pipeline(prows: list[dict], cfg: BenchConfig, *, on_update=None, log=None) -> list[dict]:
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    from tqdm import tqdm

    todo = [r for r in prows if r.get("spec") and r["status"] is None]
    try:
        for row in tqdm(todo, desc="pipeline", unit="row", disable=not cfg.progress):
            result = run_worker(row.pop("spec"), cfg.row_timeout)
            if result.get("ok"):
                for k in ("frames", "cells", "cells_per_frame", "fps", "stages", "frames_source", "peak_rss_mb"):
                    row[k] = result.get(k)
                row["status"] = st.PASSED
            else:
                row.update(status=st.FAILED, reason=f"{result.get('stage')}: {result.get('error')}",
                           peak_rss_mb=result.get("peak_rss_mb"))
            log(f"pipeline {row['model']}|{row['format']}|t{row['threads']}: {row['status']}"
                + (f", {row['fps']:.2f} frames/s" if row.get("fps") else "") + (f" ({row['reason']})" if row["reason"] else ""))
            if on_update:
                on_update(prows)
    finally:
        for row in prows:
            if row["status"] is None:
                row.pop("spec", None)
                row.update(status=st.SKIPPED, reason="the run was interrupted before this row")
    return prows


# ----------------------------------------------------------------------------- the whole run


def config_dict(cfg: BenchConfig, name: str) -> dict:
    return {"name": name, "preset": cfg.preset, "threads": list(cfg.thread_list()), "timing": dict(cfg.timing),
            "throughput_batch": cfg.throughput_batch, "max_drop_points": cfg.max_drop,
            "targets": [str(t) for t in cfg.targets], "export_tables": [str(t) for t in cfg.export_tables], "keras": [str(k) for k in cfg.keras],
            "keras_calls": list(cfg.keras_calls), "formats": list(cfg.formats) if cfg.formats else None,
            "data": str(cfg.data) if cfg.data else None, "limit": cfg.limit, "accuracy": cfg.accuracy,
            "frames": str(cfg.frames) if cfg.frames else None, "frames_limit": cfg.frames_limit}


def run_benchmark(cfg: BenchConfig, out_stem, *, command: str, training_dirs=(), plots: bool = True,
                  log: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Plan, measure, write <out_stem>.json/.csv/.md (after every row) and the plots.
    Returns (result document, written paths)."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    from hemaedge.edge import machine as mach
    from hemaedge.benchmarks import plots as pl
    from hemaedge.benchmarks import report
    from hemaedge.benchmarks.training_table import read_training_runs

    if cfg.data is not None:
        from hemaedge.benchmarks.testset import open_test_set

        open_test_set(cfg.data, "test", limit=1)  # a wrong path or layout fails here, before any row
    for k in cfg.keras:
        if not Path(k).is_file():
            raise FileNotFoundError(2, "no such Keras model", str(k))
    training = read_training_runs(training_dirs) if training_dirs else []
    bundles, failed_exports = discover(cfg.targets, cfg.export_tables)
    rows = plan(cfg, bundles, failed_exports)
    prows = plan_pipeline(cfg, bundles)
    machine = mach.describe_machine()
    name = Path(out_stem).name
    state = {"complete": False}

    def doc():
        return report.document(rows=rows, machine=machine, command=command, config=config_dict(cfg, name),
                               pipeline=prows, training=training, complete=state["complete"])

    def save(_=None):
        report.write_outputs(out_stem, doc())

    log(f"{len(rows)} rows ({sum(1 for r in rows if r.get('spec'))} to measure), "
        f"{len(prows)} per-frame rows; results -> {out_stem}.json/.csv/.md")
    save()
    execute(rows, cfg, on_update=save, log=log)
    execute_pipeline(prows, cfg, on_update=save, log=log)
    state["complete"] = True
    final = doc()
    written = {}
    if plots:
        why = pl.plots_unavailable()
        if why:
            log(why)
        else:
            written.update(pl.write_plots(final, out_stem))
    written.update(report.write_outputs(out_stem, final, plots={k: v for k, v in written.items()}))
    return final, written
