"""Helpers for the bundle-trust tests: edit a bundle the way a clumsy or hostile user would."""
from __future__ import annotations

import json
from pathlib import Path

from hemaedge.edge.bundle import sha256_file


def edit_manifest(bundle: Path, edit) -> Path:
    """Apply `edit(manifest_dict)` to bundle/manifest.json in place."""
    path = Path(bundle) / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))
    return bundle


def rehash(bundle: Path) -> Path:
    """Recompute every listed file's sha256 and size, as someone hiding an edit would."""
    def fix(m):
        for name in m["files"]:
            f = Path(bundle) / name
            m["files"][name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    return edit_manifest(bundle, fix)
