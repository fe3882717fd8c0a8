"""The export table (Ultralytics-style: one row per format with a status, never a missing row),
written as Markdown + JSON after every row, atomically, with the command, machine and date."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from hemaedge.edge.atomic import atomic_write_text
from hemaedge.edge.machine import describe_machine, one_line

COLUMNS = [("format", "Format"), ("status", "Status"), ("size_mb", "Size (MB)"), ("accuracy", "Test acc. (%)"),
           ("delta_points", "Δ acc. (pt)"), ("agreement", "Agreement (%)"), ("macro_f1_delta_points", "Δ macro-F1 (pt)"),
           ("val_accuracy", "Val acc. (%)"), ("val_delta_points", "Val Δ (pt)"), ("input", "Input"),
           ("export_s", "Export (s)")]
PERCENT = {"accuracy", "agreement", "val_accuracy"}


def machine() -> str:
    # export converts on the CPU only: the description says so
    return f"{one_line(describe_machine())}, no GPU used"


def _cell(key, value) -> str:
    if value is None:
        return "—"
    if key in PERCENT:
        return f"{100 * value:.2f}"
    if key.endswith("points"):
        return f"{value:+.2f}"
    if isinstance(value, float):
        return f"{value:.2f}" if key != "size_mb" else f"{value:.3f}"
    return str(value)


def markdown(rows, meta: dict) -> str:
    out = [f"# Export table: {meta.get('model', '?')}", ""]
    for key in ("command", "date", "machine", "source_sha256", "data", "calibration", "max_drop_points", "versions"):
        if meta.get(key) is not None:
            out.append(f"- **{key}**: `{meta[key]}`" if key == "command" else f"- **{key}**: {meta[key]}")
    out += ["", "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        out.append("| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |")
    errors = [r for r in rows if r.get("error")]
    if errors:
        out += ["", "Failures:", ""] + [f"- {r['format']}: {r['error']}" for r in errors]
    out += ["", "Accuracy and agreement on the test split (Δ = artifact − source Keras model, in points); "
            "status failed-validation when accuracy drops more than the threshold on val or test.", ""]
    return "\n".join(out)


def _atomic_write(path: Path, text: str):
    atomic_write_text(path, text)


def write_table(stem, rows, meta: dict) -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.json` (replacing both atomically)."""
    stem = Path(stem)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    _atomic_write(js, json.dumps({"meta": meta, "rows": list(rows)}, indent=2, default=str) + "\n")
    _atomic_write(md, markdown(rows, meta))
    return md, js


def base_meta(model_name: str, command: str) -> dict:
    return {"model": model_name, "command": command,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
