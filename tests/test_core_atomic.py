"""Atomic file writes (hemaedge.edge.atomic): the one implementation every writer delegates to."""
import json
import os
import stat
import subprocess
import sys

import pytest
from pathlib import Path

from hemaedge.edge.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_bytes_text_and_json_and_creates_parents(tmp_path):
    b = atomic_write_bytes(tmp_path / "a" / "b" / "blob.bin", b"\x00\x01\xff")
    assert b == tmp_path / "a" / "b" / "blob.bin" and b.read_bytes() == b"\x00\x01\xff"
    t = atomic_write_text(str(tmp_path / "t" / "note.md"), "héllo\nworld\n")
    assert t.read_bytes() == "héllo\nworld\n".encode("utf-8")
    j = atomic_write_json(tmp_path / "r.json", {"x": [1, 2], "y": "z"})
    assert j.read_text() == json.dumps({"x": [1, 2], "y": "z"}, indent=2) + "\n"
    atomic_write_json(tmp_path / "n.json", [1], indent=None, trailing_newline=False)
    assert (tmp_path / "n.json").read_text() == "[1]"


def test_newline_empty_keeps_csv_line_endings(tmp_path):
    p = atomic_write_text(tmp_path / "c.csv", "a,b\r\n1,2\r\n", newline="")
    assert p.read_bytes() == b"a,b\r\n1,2\r\n"


def test_replaces_an_existing_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "out.json"
    p.write_text("old")
    atomic_write_json(p, {"new": True}, fsync=True)
    assert json.loads(p.read_text()) == {"new": True}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.json"]


def test_default_hook_is_used(tmp_path):
    class Num:
        def item(self):
            return 3

    p = atomic_write_json(tmp_path / "d.json", {"n": Num()}, default=lambda o: o.item())
    assert json.loads(p.read_text()) == {"n": 3}


def test_serialization_error_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "keep.json"
    p.write_text('{"old": 1}')
    with pytest.raises(TypeError):
        atomic_write_json(p, {"bad": object()})
    assert p.read_text() == '{"old": 1}'
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.json"]


def test_failure_during_write_removes_temp(tmp_path, monkeypatch):
    p = tmp_path / "x.txt"
    p.write_text("old")

    def boom(src, dst):
        raise OSError("replace failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="replace failed"):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.txt"]


def test_unencodable_text_leaves_no_temp(tmp_path):
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(tmp_path / "a.txt", "é", encoding="ascii")
    assert list(tmp_path.iterdir()) == []


def test_permissions_are_0644_not_mkstemp_0600(tmp_path):
    old = os.umask(0o077)  # even a strict umask: the mode is set explicitly
    try:
        for p in (atomic_write_bytes(tmp_path / "b", b"x"), atomic_write_text(tmp_path / "t", "x"),
                  atomic_write_json(tmp_path / "j", {})):
            assert _mode(p) == 0o644
        assert _mode(atomic_write_bytes(tmp_path / "m", b"x", mode=0o600)) == 0o600
    finally:
        os.umask(old)


def test_delegating_writers_still_work(tmp_path):
    from hemaedge.edge.recorder import write_json_atomic
    from hemaedge.train.evaluate import write_json, write_text

    p = write_json(tmp_path / "m.json", {"v": 1})
    assert p.read_text() == '{\n  "v": 1\n}\n' and _mode(p) == 0o644
    assert write_text(tmp_path / "h.csv", "a\n").read_text() == "a\n"
    write_json_atomic(tmp_path / "s.json", {"v": 1})
    assert (tmp_path / "s.json").read_text() == '{\n  "v": 1\n}'
    assert not [x for x in tmp_path.iterdir() if ".tmp" in x.name]


def test_module_is_stdlib_only():
    code = ("import sys, hemaedge.edge.atomic; "
            "bad = [m for m in ('tensorflow', 'numpy', 'hemaedge.train', 'hemaedge.export', "
            "'hemaedge.benchmarks') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_atomic_path_for_writers_that_need_a_file_name(tmp_path):
    import numpy as np

    target = tmp_path / "sub" / "features-x.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".npz") and not target.exists()
        np.savez(tmp, a=np.arange(3))  # np.savez appends .npz unless the name already ends so
    assert np.load(target)["a"].tolist() == [0, 1, 2] and _mode(target) == 0o644
    with atomic_path(tmp_path / "w.weights.h5") as tmp:  # Keras reads the double suffix
        assert tmp.name.endswith(".tmp.weights.h5")
    # a writer that fails leaves the old file and no temporary behind
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("serializer crashed")
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in target.parent.iterdir()) == ["features-x.npz"]


def test_replace_dir_swaps_a_finished_folder_into_place(tmp_path):
    from hemaedge.edge.atomic import replace_dir

    final = tmp_path / "bundle"
    first = tmp_path / ".bundle.a"
    first.mkdir()
    (first / "model.tflite").write_text("v1")
    assert replace_dir(first, final) == final and (final / "model.tflite").read_text() == "v1"
    second = tmp_path / ".bundle.b"
    second.mkdir()
    (second / "model.tflite").write_text("v2")
    (tmp_path / ".bundle.old").mkdir()  # litter of a crash between the two renames
    replace_dir(second, final, fsync=True)
    assert (final / "model.tflite").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # nothing left beside it


def test_replace_dir_keeps_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    from hemaedge.edge import atomic

    final = tmp_path / "crops"
    final.mkdir()
    (final / "a.png").write_text("old")
    calls = []
    real = os.replace

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder's rename fails (a crash at this point)
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    new = tmp_path / ".crops.new"
    new.mkdir()
    with pytest.raises(OSError):
        atomic.replace_dir(new, final)
    assert (tmp_path / ".crops.old" / "a.png").read_text() == "old"  # whole, recoverable


def test_a_set_of_files_is_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """summary.json and counts.csv must agree after a kill: both are staged before either is renamed."""
    from hemaedge.edge import atomic

    a, b = tmp_path / "summary.json", tmp_path / "counts.csv"
    atomic.atomic_write_set({a: b"old a", b: b"old b"})
    assert (a.read_bytes(), b.read_bytes()) == (b"old a", b"old b")
    renames = []
    real_replace = atomic.os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda s, d: (renames.append(Path(d).name), real_replace(s, d)))

    class Boom(Exception):
        pass

    real_fdopen = atomic.os.fdopen
    calls = {"n": 0}

    def fdopen_failing_on_second(fd, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second file cannot be written (disk full, ...)
            os.close(fd)
            raise Boom()
        return real_fdopen(fd, *args, **kw)

    monkeypatch.setattr(atomic.os, "fdopen", fdopen_failing_on_second)
    with pytest.raises(Boom):
        atomic.atomic_write_set({a: b"new a", b: b"new b"})
    # nothing was renamed: the first file was only staged; no temporaries are left behind
    assert renames == [] and (a.read_bytes(), b.read_bytes()) == (b"old a", b"old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.csv", "summary.json"]
    monkeypatch.setattr(atomic.os, "fdopen", real_fdopen)
    atomic.atomic_write_set({a: b"new a", b: b"new b"}, fsync=True)
    assert renames == ["summary.json", "counts.csv"] and a.read_bytes() == b"new a" and b.read_bytes() == b"new b"
