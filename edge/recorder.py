"""What a run records, written so that a crash or a kill loses at most the frame in flight.

Files in the output folder:
  frames.jsonl   one JSON line per frame (stage latencies in ms, cells found, memory)
  frames.csv     the same, as CSV
  cells.csv      one row per cell: frame, box, kind, class, confidence, review flag
  summary.json   written atomically every few frames / seconds while the run goes on ("complete":
                 false) and at the end ("complete": true, also on Ctrl-C / SIGTERM): latency
                 percentiles per stage, fps, model size, memory, differential count
  counts.csv     the differential count: count and % per class, flagged for review (written with
                 summary.json)

Per-frame files are flushed after every frame (and fsync'ed with `fsync=True`). A file that cannot
be written (full disk, read-only folder) raises OutputError naming the folder: a run can neither
skip nor retry its own records.

How and when the files are written lives here; what goes into a summary is built by the run
loop (`edge/runloop.py`) from its parts.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from array import array
from pathlib import Path

from hemaedge.edge.atomic import atomic_write_json, atomic_write_set
from hemaedge.edge.errors import OutputError
from hemaedge.edge.metrics_runtime import STAGES, percentiles

FRAME_FIELDS = ["frame", "name", "width", "height", "cells", "wbc", "platelets", "flagged",
                *[f"{s}_ms" for s in STAGES], "rss_mb", "status", "rbc_px", "red_cells"]
CELL_FIELDS = ["frame", "name", "cell", "kind", "x0", "y0", "x1", "y1", "crop_side", "class",
               "confidence", "review", "cell_id", "track_id", "counted", "at_edge", "flag"]


def _plain(obj):
    """numpy scalars -> Python numbers for JSON."""
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: Path, data) -> None:
    atomic_write_json(path, data, indent=2, default=_plain, trailing_newline=False, fsync=True)


@contextlib.contextmanager
def writing(out: Path):
    """OS errors while writing a run's records -> one OutputError that says what to do."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the run's records ({exc.strerror or exc}); "
                          "free disk space or choose a writable output folder") from None


def _check_header(path: Path, fields: list[str]) -> None:
    """Appending rows under another header would make the file unreadable as a table."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), [])
    if header != list(fields):
        raise OutputError(f"{path}: was written with other columns ({', '.join(header[:4])}, ...) than this "
                          "version records; append to a folder of the same version, or choose a new folder")


def check_appendable(out_dir) -> None:
    """Before anything in `out_dir` is touched: its per-frame tables can take this version's rows."""
    out = Path(out_dir)
    _check_header(out / "frames.csv", FRAME_FIELDS)
    _check_header(out / "cells.csv", CELL_FIELDS)


class Recorder:
    def __init__(self, out_dir, classes: list[str], review_threshold: float = 0.6, fsync: bool = False,
                 append: bool = False, red_cell_classes: list[str] | None = None):
        self.out = Path(out_dir)
        self.classes = list(classes)
        self.review_threshold = float(review_threshold)
        self.fsync = fsync
        # 8 bytes per value (a list of floats costs 32): flat memory over a long run
        self.stage_ms: dict[str, array] = {s: array("d") for s in STAGES}
        self.counts = {c: 0 for c in self.classes}
        self.flagged = {c: 0 for c in self.classes}
        self.frames = 0
        self.frames_without_cells = 0
        self.cells = 0
        self.red_tally = None
        if red_cell_classes is not None:  # red cells are counted (and classified when classes are given)
            from hemaedge.edge.rbc_morphology import RedCellTally

            self.red_tally = RedCellTally(red_cell_classes)
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            self._jsonl = self._open("frames.jsonl", append)
            self._fcsv_fh = self._open("frames.csv", append)
            self._fcsv = csv.DictWriter(self._fcsv_fh, FRAME_FIELDS)
            self._ccsv_fh = self._open("cells.csv", append)
            self._ccsv = csv.DictWriter(self._ccsv_fh, CELL_FIELDS)
            if self._fcsv_fh.tell() == 0:
                self._fcsv.writeheader()
            if self._ccsv_fh.tell() == 0:
                self._ccsv.writeheader()
            self._flush()

    def _open(self, name: str, append: bool):
        path = self.out / name
        if append and name.endswith(".csv"):
            fields = FRAME_FIELDS if name == "frames.csv" else CELL_FIELDS
            _check_header(path, fields)
        return open(path, "a" if append else "w", encoding="utf-8", newline="")

    def record(self, *args, **kwargs) -> dict:
        """One frame: its row, and one row per cell (red cells, `red=`, with kind rbc). Returns the frame row."""
        with writing(self.out):
            return self._record(*args, **kwargs)

    def _record(self, frame, detections, labels, confidences, timings_ms: dict, rss_mb: float,
                cell_extras: list[dict] | None = None, frame_extra: dict | None = None, red=None) -> dict:
        """One frame: its row, and one row per cell (plus the counting columns of `cell_extras`,
        see edge/counting.py)."""
        flagged = 0
        for i, (det, label, conf) in enumerate(zip(detections, labels, confidences)):
            extra = cell_extras[i] if cell_extras else {}
            review = bool(extra["flag"]) if "flag" in extra else bool(conf < self.review_threshold)
            flagged += review
            self.counts[label] = self.counts.get(label, 0) + 1
            self.flagged[label] = self.flagged.get(label, 0) + review
            x0, y0, x1, y1 = det.box
            self._ccsv.writerow({"frame": frame.index, "name": frame.name, "cell": i, "kind": det.kind,
                                 "x0": x0, "y0": y0, "x1": x1, "y1": y1, "crop_side": det.crop[2],
                                 "class": label, "confidence": "" if conf != conf else round(float(conf), 4),
                                 "review": int(review), **extra})
        if red is not None:
            self._record_red(frame, red, len(detections))
        h, w = frame.image.shape[:2]
        row = {"frame": frame.index, "name": frame.name, "width": w, "height": h,
               "cells": len(detections), "wbc": sum(d.kind == "wbc" for d in detections),
               "platelets": sum(d.kind == "platelet" for d in detections), "flagged": int(flagged),
               **(frame_extra or {})}
        for s in STAGES:
            v = float(timings_ms.get(s, 0.0))
            row[f"{s}_ms"] = round(v, 3)
            self.stage_ms[s].append(v)
        row["rss_mb"] = round(rss_mb, 1)
        row["red_cells"] = len(red.cells) if red is not None else ""
        self._jsonl.write(json.dumps(row, default=_plain) + "\n")
        self._fcsv.writerow(row)
        self._flush()
        self.frames += 1
        self.cells += len(detections)
        self.frames_without_cells += not detections
        return row

    def _record_red(self, frame, red, first: int) -> None:
        """Red cells go to cells.csv after the frame's white cells (kind rbc; crop side from the ruler)."""
        classified = self.red_tally is not None and bool(self.red_tally.classes)
        for i, (cell, label, conf) in enumerate(zip(red.cells, red.labels, red.confidences)):
            x0, y0, x1, y1 = cell.box
            review = bool(classified and conf < self.review_threshold)
            self._ccsv.writerow({"frame": frame.index, "name": frame.name, "cell": first + i, "kind": "rbc",
                                 "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                                 "crop_side": red.crop_side or "",
                                 "class": label, "confidence": round(float(conf), 4) if classified else "",
                                 "review": int(review)})
        if self.red_tally is not None:
            self.red_tally.add(red)

    def _flush(self):
        for fh in (self._jsonl, self._fcsv_fh, self._ccsv_fh):
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def differential(self) -> list[dict]:
        total = sum(self.counts.values())
        return [{"class": c, "count": self.counts[c],
                 "percent": round(100.0 * self.counts[c] / total, 2) if total else 0.0,
                 "flagged": self.flagged[c]} for c in self.classes]

    def summary(self, **extra) -> dict:
        s = {"frames": self.frames, "frames_without_cells": self.frames_without_cells, "cells": self.cells,
             "flagged_for_review": sum(self.flagged.values()), "review_threshold": self.review_threshold,
             "latency_ms": {stage: percentiles(v) for stage, v in self.stage_ms.items()},
             "differential_count": self.differential()}
        if self.red_tally is not None:
            s["red_cells"] = self.red_tally.summary()
        s.update(extra)
        return s

    def write_summary(self, summary: dict) -> None:
        """summary.json, counts.csv (and rbc_counts.csv) replaced together (atomic_write_set): a
        reader, or a run killed at any moment, sees all old or all new files, never half of one
        and, but for the microseconds between two renames, never a summary and counts that disagree."""
        files = {self.out / "summary.json": json.dumps(summary, indent=2, default=_plain).encode()}
        buf = io.StringIO(newline="")
        rows = summary["differential_count"]  # edge/differential.py: the rows labs report
        w = csv.DictWriter(buf, list(rows[0]) if rows else ["section", "class", "count"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        files[self.out / "counts.csv"] = buf.getvalue().encode()
        if summary.get("red_cells"):
            buf = io.StringIO(newline="")
            w = csv.DictWriter(buf, ["class", "count", "percent", "ci95_low", "ci95_high"])
            w.writeheader()
            w.writerows(summary["red_cells"]["morphology"])
            files[self.out / "rbc_counts.csv"] = buf.getvalue().encode()
        with writing(self.out):
            atomic_write_set(files, fsync=True)

    def finish(self, summary: dict) -> None:
        """Close the per-frame files and write summary.json and counts.csv (atomically)."""
        self.close()
        self.write_summary(summary)

    def close(self, ignore_errors: bool = False):
        """Close the per-frame files; `ignore_errors` after a write already failed (the error is reported once)."""
        for fh in (self._jsonl, self._fcsv_fh, self._ccsv_fh):
            if fh.closed:
                continue
            try:
                with writing(self.out):
                    fh.flush()
                    fh.close()
            except OutputError:
                with contextlib.suppress(OSError):
                    fh.close()  # the buffer is lost either way; release the descriptor
                if not ignore_errors:
                    raise


def format_summary(s: dict) -> str:
    """The summary as a plain-text table for the terminal."""
    lines = [f"frames {s['frames']} (without cells {s['frames_without_cells']}, skipped {s.get('frames_skipped', 0)}), "
             f"detections {s['cells']} (of every kind, counted or not; {s['flagged_for_review']} flagged for review)"]
    if s.get("end_reason"):
        lines.append(f"ended: {s['end_reason']}")
    lines.append("")
    if s.get("skip_counts"):
        lines.append("skipped: " + "; ".join(f"{k} {v}" for k, v in s["skip_counts"].items()))
    lines.append("")
    lines.append(f"{'stage':<11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for stage, p in s["latency_ms"].items():
        fmt = lambda v: f"{v:9.2f}" if v is not None else f"{'-':>9}"
        lines.append(f"{stage:<11}{fmt(p['p50'])}{fmt(p['p90'])}{fmt(p['p99'])}{fmt(p['mean'])}")
    lines.append("")
    if s.get("fps") is not None:
        first = s.get("time_to_first_result_s")
        lines.append(f"throughput {s['fps']:.2f} frames/s; " + (
            f"first result {first:.2f} s after process start" if first is not None else "no frame was processed"))
    if s.get("model"):
        m = s["model"]
        lines.append(f"model {m.get('name')} ({m.get('backend')}, {m.get('size_mb', 0):.2f} MB)")
    if s.get("memory_mb"):
        mm = s["memory_mb"]
        lines.append(f"resident memory: peak {mm['peak']:.1f} MB, current {mm['current']:.1f} MB")
    lines.append("")
    if s.get("differential"):
        from hemaedge.edge.differential import format_differential

        lines.append(format_differential(s["differential"]))
    if s.get("identify"):
        rule = s["identify"]
        ood = rule.get("ood") or {}
        lines.append(f"unidentified rule: confidence < {rule['unidentified_below']:g}" + (
            f" or OOD score > {ood['threshold']:g} ({ood.get('source')})" if ood.get("threshold") is not None
            else f"; no OOD rule ({ood.get('note', 'confidence only')})")
            + (f"; counted but flagged for review when OOD score > {ood['flag_threshold']:g}"
               + (f" (top probability < {ood['review_level']:.3g}, {ood.get('flag_source')})"
                  if ood.get("review_level") is not None else "")
               if ood.get("flag_threshold") is not None else "")
            + (f"; every {', '.join(rule['review_classes'])} call flagged (--review-classes)"
               if rule.get("review_classes") else ""))
    if s.get("red_cells"):
        from hemaedge.edge.rbc_morphology import format_red_cells

        lines += ["", format_red_cells(s["red_cells"])]
    return "\n".join(lines)
