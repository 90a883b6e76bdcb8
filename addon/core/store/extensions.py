"""DuckDB extensions (httpfs, ducklake, postgres_scanner), loaded without surprises.

An extension must match DuckDB's version exactly. In order, we load one that is already
installed in DuckDB's own directory, then the one shipped by the ``duckdb-extension-<name>``
package for this DuckDB version (offline installs: ``pip install 'aispendtrack[shared]'``), then
``INSTALL`` it from DuckDB's repository (needs internet). Each step's failure is kept, so the error
says what was tried. DuckDB's own auto-loading is not relied on: it would download silently.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import duckdb

from ..redact import first_line
from .errors import StoreError

# The extension as DuckDB names it -> the Python package that ships it, and our extra that installs it.
PACKAGES = {"httpfs": ("duckdb_extension_httpfs", "encryption"),
            "ducklake": ("duckdb_extension_ducklake", "shared"),
            "postgres_scanner": ("duckdb_extension_postgres_scanner", "shared")}


class ExtensionMissing(StoreError):
    """An extension could not be loaded by any means; the message says how to get it."""


def load(con: duckdb.DuckDBPyConnection, name: str, purpose: str) -> None:
    """Load ``name`` into ``con`` or raise ExtensionMissing saying it is needed for ``purpose``."""
    tried = []
    try:
        _load_installed(con, name)
        return
    except duckdb.Error as exc:
        tried.append(f"LOAD {name}: {first_line(exc, 200)}")
    packaged = packaged_path(name)
    if packaged is not None:
        try:
            con.execute(f"LOAD '{packaged}'")
            return
        except duckdb.Error as exc:
            tried.append(f"{packaged}: {first_line(exc, 200)}")
    else:
        tried.append(f"no {PACKAGES[name][0].replace('_', '-')} package for DuckDB {duckdb.__version__}")
    try:
        con.execute(f"INSTALL {name}")
        con.execute(f"LOAD {name}")
        return
    except duckdb.Error as exc:
        tried.append(f"INSTALL {name}: {first_line(exc, 200)}")
    raise ExtensionMissing(
        f"{purpose} needs DuckDB's {name} extension for DuckDB {duckdb.__version__}, and it could not be "
        f"loaded ({'; '.join(tried)}). Install it with `pip install 'aispendtrack[{PACKAGES[name][1]}]'`, or "
        f"run `INSTALL {name}` once in DuckDB {duckdb.__version__} on a machine with internet.")


def _load_installed(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """``LOAD name`` from DuckDB's own directory only. With DuckDB's default auto-install, a LOAD of an
    extension not installed there downloads it first: silently, or, without internet, after a timeout
    (0.5 s each, measured, on every command of the shared mode)."""
    (before,) = con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone() or (True,)
    con.execute("SET autoinstall_known_extensions = false")
    try:
        con.execute(f"LOAD {name}")
    finally:
        con.execute(f"SET autoinstall_known_extensions = {bool(before)}")


def packaged_path(name: str) -> Path | None:
    """The extension file a ``duckdb-extension-*`` package ships for this exact DuckDB version."""
    try:
        package = importlib.import_module(PACKAGES[name][0])
    except ImportError:
        return None
    root = Path(package.__file__ or "").parent
    wanted = f"v{duckdb.__version__}"
    for candidate in root.rglob(f"{name}.duckdb_extension"):
        if candidate.parent.name == wanted:
            return candidate
    return None
