"""The output folder of one `edge run`: chosen so that no earlier result is silently lost.

* no folder named: a fresh `runs/edge-<date>-<time>` is created with an exclusive mkdir, so two
  runs started in the same second get two folders (`...-2`, `-3`, ...);
* a named folder that is missing or empty is used as it is;
* a non-empty folder is refused unless the caller says what to do with it:
  `replace` (--force) removes its contents first, naming each entry it removes, and only if it
  is a run folder (it holds frames.jsonl), so a mistyped path cannot empty an unrelated folder;
  `append` (--append) adds this run's rows to the per-frame logs; the previous summary.json and
  counts.csv are renamed aside (summary.before-<n>.json) so summary.json always describes the
  rows this run wrote, never a stale earlier run;
* leftovers of an interrupted atomic write (.summary.json.*.tmp) are removed at start.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hemaedge.edge.errors import OutputError, UsageError

logger = logging.getLogger(__name__)

# Written at the end (and periodically); an older copy next to new logs would describe another run.
SUMMARY_FILES = ("summary.json", "counts.csv")
# Every run folder has this from its first moment: it marks a folder --force may empty.
RUN_MARKER = "frames.jsonl"


@dataclass
class RunFolder:
    path: Path
    mode: str  # "new", "replace" or "append"
    removed: list[str] = field(default_factory=list)  # entries removed (replace), for the user
    set_aside: list[str] = field(default_factory=list)  # old summaries renamed (append)


def default_run_dir(base: Path = Path("runs"), now: dt.datetime | None = None) -> Path:
    """A new, empty, uniquely named folder under `base` (created here, atomically)."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    _mkdir(base, parents=True)
    for n in range(1, 10_000):
        path = base / (f"edge-{stamp}" if n == 1 else f"edge-{stamp}-{n}")
        try:
            os.mkdir(path)  # exclusive: exactly one process wins each name
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise _cannot_create(path, exc) from None
    raise OutputError(f"{base}: 10,000 runs started in the same second; name an output folder")


def prepare_run_folder(out: Path | None, *, replace: bool = False, append: bool = False,
                       base: Path = Path("runs")) -> RunFolder:
    """The folder this run writes to, made ready (see the module text for the rules)."""
    if replace and append:
        raise UsageError("replace the output folder or append to it, not both")
    if out is None:
        return RunFolder(default_run_dir(base), "new")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a folder; name a folder for the run's records")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        _mkdir(out, parents=True)
        return RunFolder(out, "new")
    if append:
        return RunFolder(out, "append", set_aside=_set_summaries_aside(out))
    if replace:
        if not (out / RUN_MARKER).exists():
            raise OutputError(f"{out}: holds {len(entries)} entries but is not a run folder (no {RUN_MARKER}); "
                              "refusing to empty it: choose a new or empty folder")
        for name in entries:
            _remove(out / name)
        return RunFolder(out, "replace", removed=entries)
    raise OutputError(f"{out}: already holds {len(entries)} entries ({_first(entries)}); the earlier results would "
                      "be overwritten. Choose a new folder, or replace them (--force) or add to them (--append)")


def remove_partial_writes(out: Path) -> list[str]:
    """Temporary files an atomic write left behind when the process was killed mid-write."""
    gone = []
    for p in out.glob(".*.tmp"):
        try:
            p.unlink()
            gone.append(p.name)
        except OSError:
            pass
    return gone


def _set_summaries_aside(out: Path) -> list[str]:
    moved = []
    for name in SUMMARY_FILES:
        p = out / name
        if not p.exists():
            continue
        stem, suffix = p.stem, p.suffix
        n = 1
        while (out / f"{stem}.before-{n}{suffix}").exists():
            n += 1
        target = out / f"{stem}.before-{n}{suffix}"
        try:
            os.replace(p, target)
        except OSError as exc:
            raise OutputError(f"{p}: cannot be set aside before appending ({exc.strerror or exc})") from None
        moved.append(f"{name} -> {target.name}")
    return moved


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    except OSError as exc:
        raise OutputError(f"{p}: cannot be removed ({exc.strerror or exc}); choose another output folder") from None


def _mkdir(path: Path, parents: bool = False) -> None:
    try:
        path.mkdir(parents=parents, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(path, exc) from None


def _cannot_create(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"{path}: cannot create the run folder ({exc.strerror or exc}); "
                       "choose a writable output folder")


def _first(entries: list[str], n: int = 3) -> str:
    return ", ".join(entries[:n]) + (", ..." if len(entries) > n else "")
