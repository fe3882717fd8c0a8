"""The device's status file: a Prometheus textfile that monitoring reads while `edge run` works.

node_exporter's textfile collector (or any scraper, or `cat`) reads the file; `edge run` rewrites
it atomically every `every` frames and once at the end, so a reader never sees half a file.
What it holds (every sample labelled with the running model's name and manifest digest):

  hemaedge_run_active                     1 while the run goes on, 0 once it has ended
  hemaedge_frames_total / _cells_total    frames and cells processed so far in this run
  hemaedge_frames_skipped_total           unreadable frames skipped (counted at the end)
  hemaedge_fps                            frames per second since the run started
  hemaedge_stage_latency_seconds          per-stage median (quantile="0.5") over the last frames
  hemaedge_flagged_ratio                  cells flagged for review / cells
  hemaedge_unidentified_ratio             cells the run could not place ("unidentified", edge/identify.py) / cells
  hemaedge_model_info                     1, with backend and store version as extra labels
  hemaedge_status_updated_timestamp_seconds  when the file was written (Unix time)

`read_status(path)` turns such a file back into a dict (what `hemaedge deploy --inventory`'s
device report shows); `python -m hemaedge.edge.status_file [PATH]` prints it as JSON.
Imports nothing outside hemaedge.edge.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from hemaedge.edge.atomic import atomic_write_text
from hemaedge.edge.bundle import MANIFEST_NAME, sha256_file
from hemaedge.edge.errors import HemaedgeError, OutputError
from hemaedge.edge.identify import UNIDENTIFIED
from hemaedge.edge.metrics_runtime import STAGES

log = logging.getLogger(__name__)

STATUS_NAME = "status.prom"  # the default file, in the model store's folder
DEFAULT_EVERY = 10  # frames between rewrites
LATENCY_WINDOW = 500  # the live medians cover the last frames, not the whole (possibly days-long) run

_HELP = {
    "hemaedge_run_active": ("gauge", "1 while hemaedge edge run is processing frames, 0 once the run has ended."),
    "hemaedge_frames_total": ("counter", "Frames processed in this run."),
    "hemaedge_cells_total": ("counter", "Cells segmented and classified in this run."),
    "hemaedge_frames_skipped_total": ("counter", "Unreadable frames skipped in this run (known at the end)."),
    "hemaedge_fps": ("gauge", "Frames processed per second since the run started."),
    "hemaedge_stage_latency_seconds": ("gauge", "Median latency per stage over the last frames."),
    "hemaedge_flagged_ratio": ("gauge", "Fraction of cells flagged for human review (low confidence)."),
    "hemaedge_unidentified_ratio": ("gauge", "Fraction of cells classed 'unidentified'."),
    "hemaedge_model_info": ("gauge", "The model this run uses (always 1; see the labels)."),
    "hemaedge_status_updated_timestamp_seconds": ("gauge", "Unix time this file was written."),
}


def default_status_path(model_root) -> Path | None:
    """`<store>/status.prom` when `model_root` is the device store's active model, else None."""
    try:
        from hemaedge.edge.store import default_store

        store = default_store()
        active = store.active_path()
    except (HemaedgeError, OSError, ImportError):  # no usable store: no default status file
        return None
    root = getattr(store, "root", None)
    if active is None or model_root is None or root is None:
        return None
    try:
        same = Path(active).resolve() == Path(model_root).resolve()
    except OSError:
        return None
    return Path(root) / STATUS_NAME if same else None


def model_labels(model) -> dict:
    """Name, manifest digest, back end and store version of what a run loaded (Bundle or bare file)."""
    root = Path(getattr(model, "root", "") or ".")
    manifest = getattr(model, "manifest", None)
    digest = ""
    if manifest is not None:
        try:  # the manifest's sha256 names the whole bundle (as the store's manifest_sha256)
            digest = "sha256:" + sha256_file(root / MANIFEST_NAME)
        except OSError:
            digest = ""
    name = (manifest or {}).get("name") if manifest is not None else getattr(model, "name", "")
    return {"name": name or "", "digest": digest, "backend": getattr(model, "backend", "") or "",
            "version": root.name if root.parent.name == "versions" else ""}


def open_status_file(path, model, every: int = DEFAULT_EVERY) -> "StatusFile | None":
    """The run's StatusFile: at `path`, else the store's default when `model` is its active one, else None."""
    labels = model_labels(model)
    path = Path(path) if path else default_status_path(getattr(model, "root", None))
    return StatusFile(path, labels, every=every) if path else None


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def render(values: dict, model: dict) -> str:
    """Prometheus text exposition format for one snapshot of a run."""
    base = {"model": model.get("name") or "", "digest": model.get("digest") or ""}
    samples: dict[str, list[tuple[dict, object]]] = {name: [] for name in _HELP}
    for name in ("hemaedge_run_active", "hemaedge_frames_total", "hemaedge_cells_total",
                 "hemaedge_frames_skipped_total", "hemaedge_fps", "hemaedge_flagged_ratio",
                 "hemaedge_unidentified_ratio", "hemaedge_status_updated_timestamp_seconds"):
        samples[name].append((base, values[name.removeprefix("hemaedge_")]))
    for stage, p50_ms in values["stage_p50_ms"].items():
        seconds = None if p50_ms is None else round(p50_ms / 1e3, 6)
        samples["hemaedge_stage_latency_seconds"].append(({**base, "stage": stage, "quantile": "0.5"}, seconds))
    samples["hemaedge_model_info"].append(({**base, "backend": model.get("backend") or "",
                                            "version": model.get("version") or ""}, 1))
    lines = []
    for name, rows in samples.items():
        kind, text = _HELP[name]
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in rows]
    return "\n".join(lines) + "\n"


class StatusFile:
    """Rewrites `path` from a run's Recorder every `every` frames, and at the end from its summary."""

    def __init__(self, path, model: dict, every: int = DEFAULT_EVERY):
        self.path = Path(path)
        self.model = dict(model)
        self.every = max(1, int(every))
        self.started = time.time()
        self._since_write = 0
        self._written = False
        self.write({"frames": 0, "cells": 0, "flagged": 0, "unidentified": 0, "skipped": 0,
                    "fps": 0.0, "stage_p50_ms": {s: None for s in STAGES}}, active=True)

    def frame_done(self, recorder) -> None:
        """Call after each recorded frame; writes on every `every`-th."""
        self._since_write += 1
        if self._since_write >= self.every:
            elapsed = time.time() - self.started
            self.write(self._from_recorder(recorder, fps=recorder.frames / elapsed if elapsed > 0 else 0.0),
                       active=True)

    def finish(self, recorder, summary: dict) -> None:
        """The final snapshot: the run's own fps and skipped count; run_active 0."""
        values = self._from_recorder(recorder, fps=float(summary.get("fps") or 0.0))
        values["skipped"] = int(summary.get("frames_skipped") or 0)
        self.write(values, active=False)

    @staticmethod
    def _from_recorder(recorder, fps: float) -> dict:
        p50 = {s: (float(np.median(v[-LATENCY_WINDOW:])) if v else None) for s, v in recorder.stage_ms.items()}
        return {"frames": recorder.frames, "cells": recorder.cells, "flagged": sum(recorder.flagged.values()),
                "unidentified": recorder.counts.get(UNIDENTIFIED, 0), "skipped": 0, "fps": fps, "stage_p50_ms": p50}

    def write(self, v: dict, active: bool) -> None:
        cells = v["cells"]
        values = {"run_active": int(active), "frames_total": v["frames"], "cells_total": cells,
                  "frames_skipped_total": v["skipped"], "fps": round(float(v["fps"]), 4),
                  "flagged_ratio": round(v["flagged"] / cells, 6) if cells else 0.0,
                  "unidentified_ratio": round(v["unidentified"] / cells, 6) if cells else 0.0,
                  "status_updated_timestamp_seconds": round(time.time(), 3),
                  "stage_p50_ms": v["stage_p50_ms"]}
        self._since_write = 0
        try:
            atomic_write_text(self.path, render(values, self.model))
        except OSError as exc:
            if not self._written:  # a path that cannot be written at all: say so before the run starts
                raise OutputError(f"status file {self.path}: cannot be written ({exc}); "
                                  "choose another --status-file") from None
            # later failures (disk full for a moment) must not end a run: warn and carry on
            log.warning("status file %s not updated: %s", self.path, exc)
            return
        self._written = True


_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def read_status(path) -> dict:
    """The status file as a dict: model, fps, latency p50 per stage (ms), rates, update time."""
    out: dict = {"path": str(path), "stage_p50_ms": {}}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = _SAMPLE.match(line)
        if not m or line.startswith("#"):
            continue
        labels = {k: re.sub(r"\\(.)", lambda x: {"n": "\n"}.get(x[1], x[1]), v)
                  for k, v in _LABEL.findall(m["labels"] or "")}
        value = float(m["value"])
        name = m["name"].removeprefix("hemaedge_")
        if name == "stage_latency_seconds":
            out["stage_p50_ms"][labels.get("stage", "")] = None if math.isnan(value) else round(value * 1e3, 3)
        elif name == "model_info":
            out["model"] = {k: labels.get(k, "") for k in ("model", "digest", "backend", "version")}
        else:
            out[name] = value
    return out


def device_report(store_root=None) -> dict:
    """What a device runs and how its last run went: the fleet report's row (read-only)."""
    from importlib.metadata import PackageNotFoundError, version

    from hemaedge.edge.store import ModelStore, default_store

    store = ModelStore(store_root) if store_root else default_store()
    try:
        hemaedge_version = version("hemaedge")
    except PackageNotFoundError:
        hemaedge_version = None
    active = next((v for v in store.list_versions() if v.active), None)
    path = store.root / STATUS_NAME
    return {"hemaedge_version": hemaedge_version, "store": str(store.root),
            "active": {"version": active.version, "name": active.name, "manifest_sha256": active.manifest_sha256,
                       "backend": active.backend} if active else None,
            "status": read_status(path) if path.is_file() else None}


def main(argv=None) -> int:
    """`python -m hemaedge.edge.status_file [PATH]`: a status file as JSON (default: the store's);
    `... --report [--store DIR]`: the device's fleet-report row (active model, version, status)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--report"]:
        store = argv[argv.index("--store") + 1] if "--store" in argv[:-1] else None
        print(json.dumps(device_report(store)))
        return 0
    if argv:
        path = Path(argv[0])
    else:
        from hemaedge.edge.store import default_store

        path = default_store().root / STATUS_NAME
    if not path.is_file():
        print(json.dumps({"path": str(path), "missing": True}))
        return 1
    print(json.dumps(read_status(path)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
