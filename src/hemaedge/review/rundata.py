"""One run folder as a reviewer sees it: its cells, their crops, and the corrections made so far.

`corrections.csv` is an append-only log (time, cell, old and new class, action). The class of a
cell is the model's, then the `new_class` of the last log row about it, so replaying the log
gives the corrected differential at any time, and an undo is one more row (nothing is erased:
the report shows every change). Each append rewrites the file atomically with fsync
(edge/atomic.py), so a kill of the server loses nothing already answered.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from hemaedge.edge.atomic import atomic_write_text
from hemaedge.edge.crops import CONTEXT_DIR, CROPS_DIR, crop_name
from hemaedge.edge.differential import clopper_pearson
from hemaedge.edge.errors import DataError
from hemaedge.edge.identify import NOT_CLASSIFIED

CORRECTIONS = "corrections.csv"
CORRECTION_FIELDS = ["time_utc", "frame", "cell", "name", "old_class", "new_class", "action", "reviewer"]
NOT_A_CELL = "not_a_cell"
UNIDENTIFIED = "unidentified"
ACTIONS = ("reclassify", "confirm", "undo")


@dataclass
class Cell:
    key: str           # "frame:cell", unique within a run
    frame: int
    cell: int          # cell (or track) id within the frame, as cells.csv names it
    name: str          # the frame's file name
    kind: str
    model_class: str
    confidence: float
    flagged: bool
    crop: str | None   # crop file name under crops/, None when not saved
    context: str | None
    current: str = ""  # class after the reviewer's corrections
    reviewed: bool = False
    counted: bool = True  # False: the run left it out of the differential (e.g. cut by the frame edge)

    def to_dict(self) -> dict:
        return {"key": self.key, "frame": self.frame, "cell": self.cell, "name": self.name, "kind": self.kind,
                "model_class": self.model_class, "confidence": self.confidence, "flagged": self.flagged,
                "crop": self.crop, "context": self.context, "current": self.current, "reviewed": self.reviewed}


def confidence_text(value) -> str:
    """A cell's confidence as the review page and the report print it: "" when the run has none
    (a cell not classified, NaN or None)."""
    return "" if value is None or value != value else f"{value:.2f}"


def _lowest_first(cell) -> tuple:
    """Sort key: lowest confidence first, cells without one last (NaN does not sort)."""
    c = cell.confidence
    return (c != c, 0.0 if c != c else c)


def cell_key(frame, cell) -> str:
    return f"{int(frame)}:{int(cell)}"


def _cell_id(row: dict) -> int:
    # The id the crop files are named by (edge.crops): the cell's index within its frame, as
    # CropSaver numbers it; a run without that column falls back to its cell_id / track_id.
    for col in ("cell", "cell_id", "track_id"):
        if row.get(col) not in (None, ""):
            return int(float(row[col]))
    raise ValueError("no cell column")


def read_cells(run_dir: Path) -> list[Cell]:
    path = run_dir / "cells.csv"
    if not path.is_file():
        raise DataError(f"{run_dir}: no cells.csv; is this the output folder of `hemaedge edge run`?")
    cells, seen = [], set()
    with open(path, encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                frame, cid = int(row["frame"]), _cell_id(row)
                conf = float(row["confidence"] or "nan")  # empty: not classified (or no platelet class)
                label = row["class"]
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: line {n} is not a cell row (frame, cell, class, confidence)") from None
            name = crop_name(frame, cid)
            crop = name if (run_dir / CROPS_DIR / name).is_file() else None
            context = name if (run_dir / CONTEXT_DIR / name).is_file() else None
            review = str(row.get("review", "0")).strip() in ("1", "True", "true")
            counted = str(row.get("counted", "1")).strip() not in ("0", "False", "false")
            if cell_key(frame, cid) in seen:
                raise DataError(f"{path}: cell {cell_key(frame, cid)} is listed twice (a run continued with "
                                "--append?); review each run in its own folder")
            seen.add(cell_key(frame, cid))
            cells.append(Cell(cell_key(frame, cid), frame, cid, row.get("name", ""), row.get("kind", ""),
                              label, conf, review, crop, context, current=label, counted=counted))
    return cells


def read_corrections(run_dir: Path) -> list[dict]:
    path = run_dir / CORRECTIONS
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@dataclass
class RunReview:
    """A run folder with its corrections applied; thread-safe appends for the review server."""

    root: Path
    classes: list[str]
    cells: list[Cell]
    summary: dict = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    by_key: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _allowed: dict | None = field(default=None, repr=False)

    @classmethod
    def open(cls, run_dir) -> "RunReview":
        root = Path(run_dir)
        if not root.is_dir():
            raise DataError(f"{root}: no such run folder")
        summary = {}
        if (root / "summary.json").is_file():
            try:
                summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise DataError(f"{root}/summary.json is damaged; re-run `hemaedge edge run`") from None
        cells = read_cells(root)
        classes = list((summary.get("model") or {}).get("classes") or [])
        for c in cells:
            if c.model_class not in classes and c.model_class != NOT_CLASSIFIED:  # never a class to set or count
                classes.append(c.model_class)
        rr = cls(root, classes, cells, summary, by_key={c.key: c for c in cells})
        for row in read_corrections(root):
            rr._apply(row)
        return rr

    # --------------------------------------------------------------- corrections

    @property
    def choices(self) -> list[str]:
        """What a cell may be set to: the model's classes, then 'not a cell'."""
        return [*self.classes, NOT_A_CELL]

    def _apply(self, row: dict) -> None:
        cell = self.by_key.get(cell_key(row["frame"], row["cell"]))
        if cell is None:
            raise DataError(f"{self.root / CORRECTIONS}: a correction names cell {row['frame']}:{row['cell']}, "
                            "which is not in cells.csv (corrections from another run?)")
        cell.current = row["new_class"]
        cell.reviewed = row.get("action") != "undo" or cell.current != cell.model_class
        self.log.append(row)

    def _undo_stack(self) -> list[dict]:
        stack = []
        for row in self.log:
            if row.get("action") == "undo":
                if stack:
                    stack.pop()
            else:
                stack.append(row)
        return stack

    def _append(self, row: dict) -> None:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, CORRECTION_FIELDS)
        w.writeheader()
        w.writerows([{k: r.get(k, "") for k in CORRECTION_FIELDS} for r in [*self.log, row]])
        atomic_write_text(self.root / CORRECTIONS, buf.getvalue(), newline="", fsync=True)
        self._apply(row)

    def correct(self, key: str, new_class: str, reviewer: str = "") -> dict:
        """Set a cell's class (the same class = confirm it); returns the row written."""
        with self._lock:
            cell = self.by_key.get(key)
            if cell is None:
                raise KeyError(key)
            if new_class not in self.choices:
                raise ValueError(f"unknown class {new_class!r}")
            row = {"time_utc": _now(), "frame": cell.frame, "cell": cell.cell, "name": cell.name,
                   "old_class": cell.current, "new_class": new_class,
                   "action": "confirm" if new_class == cell.current else "reclassify", "reviewer": reviewer}
            self._append(row)
            return row

    def undo(self, reviewer: str = "") -> dict | None:
        """Revert the last change not yet undone; None when there is nothing to undo."""
        with self._lock:
            stack = self._undo_stack()
            if not stack:
                return None
            last = stack[-1]
            cell = self.by_key[cell_key(last["frame"], last["cell"])]
            row = {"time_utc": _now(), "frame": cell.frame, "cell": cell.cell, "name": cell.name,
                   "old_class": cell.current, "new_class": last["old_class"], "action": "undo",
                   "reviewer": reviewer}
            self._append(row)
            return row

    # --------------------------------------------------------------- views

    def differential(self) -> dict:
        """Counts per class after corrections, with 95% intervals; 'not a cell' is left out, and so
        are cells the run did not count (a `counted` column of 0, e.g. cut by the frame edge)."""
        counted = [c for c in self.cells if c.current != NOT_A_CELL and c.counted]
        n = len(counted)
        rows = []
        for cls in self.classes:
            k = sum(c.current == cls for c in counted)
            lo, hi = clopper_pearson(k, n) if n else (0.0, 0.0)  # the run's own interval (edge/differential)
            rows.append({"class": cls, "count": k, "percent": round(100.0 * k / n, 2) if n else 0.0,
                         "ci95_low": round(100.0 * lo, 2), "ci95_high": round(100.0 * hi, 2),
                         "flagged": sum(c.current == cls and c.flagged for c in counted)})
        return {"cells": n, "rows": rows,
                "not_a_cell": sum(c.current == NOT_A_CELL for c in self.cells),
                "not_counted": sum(not c.counted for c in self.cells),
                "flagged": sum(c.flagged for c in self.cells),
                "flagged_unreviewed": sum(c.flagged and not c.reviewed for c in self.cells),
                "unidentified": sum(c.current == UNIDENTIFIED for c in self.cells),
                "changed": sum(c.current != c.model_class for c in self.cells),
                "corrections": len(self.log)}

    def groups(self) -> list[tuple[str, list[Cell]]]:
        """Gallery order: unidentified cells, then flagged ones, then each class (by confidence, lowest
        first), and last the cells the run did not classify (cut by the frame edge, never counted:
        nothing for a reviewer to decide, so they do not hold up the flagged ones)."""
        cut = [c for c in self.cells if c.model_class == NOT_CLASSIFIED]
        cells = [c for c in self.cells if c.model_class != NOT_CLASSIFIED]
        unid = [c for c in cells if c.model_class == UNIDENTIFIED]
        flagged = [c for c in cells if c.flagged and c.model_class != UNIDENTIFIED]
        rest = [c for c in cells if not c.flagged and c.model_class != UNIDENTIFIED]
        out = []
        if unid:
            out.append(("Unidentified", sorted(unid, key=_lowest_first)))
        if flagged:
            out.append(("Flagged for review", sorted(flagged, key=_lowest_first)))
        for cls in self.classes:
            members = [c for c in rest if c.model_class == cls]
            if members:
                out.append((cls, sorted(members, key=_lowest_first)))
        if cut:
            out.append(("Cut by the frame edge (not classified, not counted)", cut))
        return out

    def gallery(self) -> list[tuple[str, Cell]]:
        """Every cell in gallery order with its group's title (the order `groups` gives; it depends
        on the model's answers only, so a correction never moves a cell to another page)."""
        return [(title, c) for title, members in self.groups() for c in members]

    def crop_file(self, folder: str, name: str) -> Path | None:
        """The path of a crop this run saved, or None: only names listed for this run's cells qualify."""
        if self._allowed is None:  # the cells never change while the server runs
            self._allowed = {CROPS_DIR: {c.crop for c in self.cells}, CONTEXT_DIR: {c.context for c in self.cells}}
        allowed = self._allowed
        if folder not in allowed or name not in allowed[folder] or name is None:
            return None
        base = (self.root / folder).resolve()
        path = self.root / folder / name
        if path.is_symlink() or not path.is_file() or path.resolve().parent != base:
            return None
        if (self.root / folder).is_symlink():
            return None
        return path


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
