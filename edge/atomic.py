"""Atomic file writes: a temporary file in the target's folder, then os.replace; and the same for
folders (replace_dir: a finished sibling folder swapped into place).

A reader never sees a half-written file under the real name: it sees either the old file or the
new one. The temporary file is removed on any exception (including a serializer that raises).
Standard library only; this module must not import TensorFlow or anything outside hemaedge.edge.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_set", "atomic_path",
           "replace_dir", "fsync_dir"]

DEFAULT_MODE = 0o644


def _stage(path: Path, data: bytes, mode: int | None, fsync: bool) -> str:
    """`data` in a new temporary file beside `path` (its folder made if missing), flushed to disk
    with `fsync` and given `mode`; the caller renames it into place or removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_bytes(path, data: bytes, mode: int | None = DEFAULT_MODE, fsync: bool = False) -> Path:
    """Write `data` to `path` atomically and return the path.

    Parent folders are created. `mode` is applied to the file before it is moved into place
    (mkstemp creates files 0600); pass None to keep mkstemp's mode. With `fsync` the data is
    flushed to disk before the replace.
    """
    path = Path(path)
    tmp = _stage(path, data, mode, fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str, encoding: str = "utf-8", newline: str | None = None,
                      mode: int | None = DEFAULT_MODE, fsync: bool = False) -> Path:
    """Write `text` to `path` atomically.

    `newline` has the meaning of open()'s: None translates "\\n" to os.linesep, "" writes the
    text unchanged (use it for csv-module output, which carries its own line endings).
    """
    if newline is None and os.linesep != "\n":
        text = text.replace("\n", os.linesep)
    elif newline not in (None, ""):
        text = text.replace("\n", newline)
    return atomic_write_bytes(path, text.encode(encoding), mode=mode, fsync=fsync)


def atomic_write_json(path, obj, indent: int | None = 2, default=None, trailing_newline: bool = True,
                      encoding: str = "utf-8", mode: int | None = DEFAULT_MODE, fsync: bool = False) -> Path:
    """Serialize `obj` as JSON (json.dumps with `indent` and `default`) and write it atomically.

    Serialization happens before any file is created, so a value that cannot be serialized
    leaves the folder untouched.
    """
    text = json.dumps(obj, indent=indent, default=default)
    if trailing_newline:
        text += "\n"
    return atomic_write_text(path, text, encoding=encoding, mode=mode, fsync=fsync)


def atomic_write_set(files: dict, mode: int | None = DEFAULT_MODE, fsync: bool = False) -> list[Path]:
    """Write several files that must agree (summary.json and counts.csv): every temporary file is
    written (and flushed) first, then they are renamed into place back to back, so a kill can
    only fall in the microseconds between two renames, not during a write. `files` maps a path to
    its bytes; on any exception while writing, no file is replaced and the temporaries are removed.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(Path(path), data, mode, fsync), Path(path)))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return [p for _, p in staged]


@contextlib.contextmanager
def atomic_path(path, mode: int | None = DEFAULT_MODE):
    """For writers that insist on a file name (matplotlib's savefig, np.savez, Keras's save):
    yields a temporary path in the target's folder that ends like the target (.keras,
    .weights.h5, .npz: those writers look at the suffix); when the block ends normally the file
    is moved into place, on any exception it is removed and the old file stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes[-2:]), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where the file system refuses."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_dir(tmp, final, fsync: bool = False) -> Path:
    """Move the finished folder `tmp` to `final` (same file system), replacing a folder already there.

    The old `final` is renamed aside to the hidden sibling `.NAME.old` and removed only after the
    new folder is in place, so nobody ever sees a half-written or half-deleted folder under the
    real name. A crash between the two renames leaves `final` missing and the old folder whole at
    `.NAME.old` (cleared by the next replace). With `fsync` the parent folder is flushed after
    the rename. The caller builds `tmp` and removes it if anything fails before this call.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)  # the new folder is in place: a leftover is only litter
    else:
        os.replace(tmp, final)
    if fsync:
        fsync_dir(final.parent)
    return final
