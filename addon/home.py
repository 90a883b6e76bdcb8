"""Where AiSpendTrack keeps its data: one directory, resolved in one place."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "AISPENDTRACK_HOME"
DB_FILE = "aispendtrack.duckdb"
SPILL_DIR = "spill"
CACHE_DIR = "cache"


def resolve(explicit: str | os.PathLike | None = None) -> Path:
    """--home wins, then $AISPENDTRACK_HOME, then ~/.aispendtrack. The directory is created."""
    chosen = explicit or os.environ.get(ENV_VAR) or Path.home() / ".aispendtrack"
    home = Path(chosen).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def db_path(home: Path) -> Path:
    return home / DB_FILE
