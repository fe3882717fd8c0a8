"""Where hemaedge keeps re-creatable files on this machine (downloads, converted weights,
feature caches): `$HEMAEDGE_CACHE`, else the platform's user cache folder."""
from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_dir(*parts: str) -> Path:
    """The cache root, or a folder below it (`cache_dir("features")`); not created here."""
    env = os.environ.get("HEMAEDGE_CACHE")
    root = Path(env).expanduser() if env else Path(user_cache_dir("hemaedge"))
    return root.joinpath(*parts)
