"""Where AiSpendTrack keeps its data: one directory, resolved in one place."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

ENV_VAR = "AISPENDTRACK_HOME"
DB_FILE = "aispendtrack.duckdb"
SPILL_DIR = "spill"
SPOOL_DIR = "spool"  # exports being sent (core/spool.py)
CACHE_DIR = "cache"
WORKERS_DIR = "workers"  # `proxy --workers N`: each worker's directory (its spill files), the host's counts


def private_files() -> None:
    """Files this process creates from now on are readable by its own user only."""
    os.umask(0o077)


def resolve(explicit: str | os.PathLike | None = None) -> Path:
    """--home wins, then $AISPENDTRACK_HOME, then ~/.aispendtrack. The directory is created.

    The data holds customer ids and spend, so from here on this process creates files readable by
    its own user only (umask 077: the database, its WAL, spill files, exports); files an older
    version left readable by others are made private too."""
    chosen = explicit or os.environ.get(ENV_VAR) or Path.home() / ".aispendtrack"
    home = Path(chosen).expanduser().resolve()
    private_files()
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


def spill_dir(home: Path, slot: int | None = None) -> Path:
    """Where a writer spills the rows it cannot store yet: the lone proxy's (``slot`` None), or that of
    worker ``slot`` of `proxy --workers N` (replayed by the next worker in that slot)."""
    return (home if slot is None else home / WORKERS_DIR / str(slot)) / SPILL_DIR


def spill_dirs(home: Path) -> list[Path]:
    """Every spill directory of ``home``: the lone proxy's, then each worker slot's that exists."""
    return [spill_dir(home), *sorted((home / WORKERS_DIR).glob(f"*/{SPILL_DIR}"))]


def gather_spills(home: Path, into: Path) -> int:
    """Move every spill file of ``home`` that is not in ``into`` there, and say how many: at a start,
    before any writer runs, so that rows spilled by a lone proxy are replayed by workers, and rows of
    workers (any count of them) by a lone proxy, whichever runs next. A spill file is whole once it
    has its name (written as .partial, then renamed), and its name is unique: a rename moves it."""
    moved = 0
    for directory in spill_dirs(home):
        if directory.resolve() == into.resolve() or not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.jsonl")):
            into.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(path, into / path.name)
            moved += 1
    return moved


def secret(home: Path, name: str) -> str:
    """A random secret kept in ``home/name``, readable by this user only, made on first use (by
    whichever process comes first: the others read the same one)."""
    path = home / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)  # older versions and umasks may have left it readable
    else:
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex())  # as secrets.token_hex(32), whose import costs `--help` ~8 ms
    for _ in range(50):  # another process may have created it a moment ago and not yet written it
        value = path.read_text().strip()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty: delete it and try again.")


LOCK_FILE = "proxy.lock"


class HomeInUse(RuntimeError):
    """Another proxy already runs on this data directory; the message names it and the way out."""


def claim(home: Path, listening: str) -> int:
    """Make this process the one proxy of ``home``: an exclusive lock held until the process ends.

    Two proxies on one directory would each count limits and budgets alone (a limit of 130 let
    186 calls through) and take turns at the file. Returns the lock's file descriptor, to keep open.
    The lock is the kernel's (flock), so a proxy that dies, even by kill -9, releases it."""
    path = home / LOCK_FILE
    # Held open read-only: a file open for writing would keep the volume from being remounted.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise HomeInUse(_in_use_message(home, path)) from None
    try:  # who holds it, for the message a second proxy prints; the lock works without it
        path.write_text(json.dumps({"pid": os.getpid(), "listening": listening}), encoding="utf-8")
    except OSError:
        pass
    return fd


def check_free(home: Path) -> None:
    """Raise HomeInUse if a proxy runs on ``home`` now (the CLI asks before it prints anything)."""
    path = home / LOCK_FILE
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise HomeInUse(_in_use_message(home, path)) from None
    finally:
        os.close(fd)


def _in_use_message(home: Path, path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        who = f"process {holder['pid']}, listening on {holder['listening']}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another process"
    return (f"Another AiSpendTrack proxy already runs on {home} ({who}). One data directory takes one proxy: "
            f"a second would count limits and budgets apart from the first. Stop it first, or run several "
            f"proxies as one: give each its own --home and share storage with --catalog/--data-path "
            f"(docs/deploy.md, \"Running several proxies as one\").")
