"""Where AiSpendTrack keeps its data: one directory, resolved in one place."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "AISPENDTRACK_HOME"
DB_FILE = "aispendtrack.duckdb"
SPILL_DIR = "spill"
CACHE_DIR = "cache"


def resolve(explicit: str | os.PathLike | None = None) -> Path:
    """--home wins, then $AISPENDTRACK_HOME, then ~/.aispendtrack. The directory is created.

    The data holds customer ids and spend, so from here on this process creates files readable by
    its own user only (umask 077: the database, its WAL, spill files, exports); files an older
    version left readable by others are made private too."""
    chosen = explicit or os.environ.get(ENV_VAR) or Path.home() / ".aispendtrack"
    home = Path(chosen).expanduser().resolve()
    os.umask(0o077)
    home.mkdir(parents=True, exist_ok=True)
    _make_private(home)
    return home


def _make_private(home: Path) -> None:
    try:
        home.chmod(0o700)
        for path in home.glob(DB_FILE + "*"):
            path.chmod(0o600)
    except OSError:  # a directory we may read but not own: the files keep what they have
        pass


def db_path(home: Path) -> Path:
    return home / DB_FILE
