"""Write one result table: PREFIX.json (the data) and PREFIX.md (its rendering), each atomically."""
from __future__ import annotations

import json
from pathlib import Path

from hemaedge.edge.atomic import atomic_write_text


def result_name(bundle) -> str:
    """The file suffix of a bundle's result table: "default" for the packaged default bundle, else
    the bundle folder's name (a candidate's table must not overwrite the default's)."""
    from hemaedge.edge.defaults import packaged_default_bundle

    path = Path(bundle).resolve()
    return "default" if path == packaged_default_bundle().resolve() else path.name


def write_result(prefix, data, markdown_text: str) -> tuple[Path, Path]:
    """PREFIX.json + PREFIX.md next to each other; the folder is made if missing."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # appended, not with_suffix: a name such as "bundle-v1.2" keeps its dot
    json_path, md_path = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")
    atomic_write_text(json_path, json.dumps(data, indent=2) + "\n")
    atomic_write_text(md_path, markdown_text)
    return json_path, md_path
