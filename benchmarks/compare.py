"""Compare two benchmark result files: per-row ratios new / old.

Rows are matched by id (model | format | back end | threads). Besides the raw p50 ratio, the
ratio of the baseline-normalised latencies (row p50 / Keras p50 in the same run) is shown:
it cancels much of the difference between a busy and a quiet machine, or between two devices.
"""
from __future__ import annotations

import json
from pathlib import Path

from hemaedge.edge.errors import HemaedgeError
from hemaedge.benchmarks import schema as sch
from hemaedge.benchmarks.report import md_table
from hemaedge.benchmarks.stats import ratio


class CompareError(HemaedgeError, ValueError):
    """A file that is not a benchmark result."""


def read_json(path) -> dict:
    """A JSON file as written by `bench run` (no schema check); CompareError when it is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such result file", str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{path}: not valid JSON ({exc})") from None


def load_result(path) -> dict:
    """A benchmark result that follows benchmarks/schema.json."""
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("schema") != "hemaedge-bench":
        raise CompareError(f"{path}: not a hemaedge benchmark result (no \"schema\": \"hemaedge-bench\")")
    problems = sch.validate(doc)
    if problems:
        raise CompareError(f"{path}: does not follow benchmarks/schema.json: " + "; ".join(problems[:5]))
    return doc


def compare(old: dict, new: dict) -> list[dict]:
    """One entry per row id found in either file."""
    old_rows = {r["id"]: r for r in old["rows"]}
    new_rows = {r["id"]: r for r in new["rows"]}
    ids = list(new_rows) + [i for i in old_rows if i not in new_rows]
    out = []
    for rid in ids:
        o, n = old_rows.get(rid), new_rows.get(rid)
        entry = {"id": rid, "old_status": o["status"] if o else None, "new_status": n["status"] if n else None}
        if o and n:
            ol, nl = o.get("latency") or {}, n.get("latency") or {}
            entry.update(
                old_p50_ms=ol.get("p50_ms"), new_p50_ms=nl.get("p50_ms"),
                p50_ratio=ratio(nl.get("p50_ms"), ol.get("p50_ms")),
                p99_ratio=ratio(nl.get("p99_ms"), ol.get("p99_ms")),
                throughput_ratio=ratio((n.get("throughput") or {}).get("images_per_s"),
                                       (o.get("throughput") or {}).get("images_per_s")),
                normalised_p50_ratio=ratio((n.get("vs_baseline") or {}).get("p50"),
                                           (o.get("vs_baseline") or {}).get("p50")),
                size_ratio=ratio(n.get("size_mb"), o.get("size_mb")),
                peak_rss_ratio=ratio(n.get("peak_rss_mb"), o.get("peak_rss_mb")),
                accuracy_delta_points=(100.0 * (n["accuracy"] - o["accuracy"])
                                       if n.get("accuracy") is not None and o.get("accuracy") is not None else None))
        out.append(entry)
    return out


def _f(v, fmt):
    return "—" if v is None else fmt.format(v)


def format_comparison(entries: list[dict], old_name: str, new_name: str, old: dict, new: dict) -> str:
    lines = [f"old: {old_name} ({old['machine'].get('cpu_model')}, {str(old['machine'].get('date'))[:10]})",
             f"new: {new_name} ({new['machine'].get('cpu_model')}, {str(new['machine'].get('date'))[:10]})",
             "ratios are new / old: below 1 = faster or smaller in the new run", ""]
    rows = [[e["id"].replace("|", " · "), f"{e['old_status'] or 'absent'} → {e['new_status'] or 'absent'}",
             _f(e.get("old_p50_ms"), "{:.3f}"), _f(e.get("new_p50_ms"), "{:.3f}"), _f(e.get("p50_ratio"), "{:.2f}"),
             _f(e.get("p99_ratio"), "{:.2f}"), _f(e.get("normalised_p50_ratio"), "{:.2f}"),
             _f(e.get("throughput_ratio"), "{:.2f}"), _f(e.get("size_ratio"), "{:.2f}"),
             _f(e.get("peak_rss_ratio"), "{:.2f}"), _f(e.get("accuracy_delta_points"), "{:+.2f}")]
            for e in entries]
    lines += md_table(["Row", "Status", "Old p50 (ms)", "New p50 (ms)", "p50 ratio", "p99 ratio",
                       "p50 ratio (÷ Keras)", "Throughput ratio", "Size ratio", "Peak RSS ratio", "Δ acc. (pt)"], rows)
    return "\n".join(lines) + "\n"
