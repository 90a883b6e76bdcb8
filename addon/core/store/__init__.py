"""The only place that speaks SQL or opens the database.

- ``connection``: opens the file (with the retry one-writer-per-file needs), ``one()``;
- ``migrations``: the schema, as named steps recorded in ``schema_migrations``;
- ``encryption``: encrypted database files; ``compact``: rewriting a file to reclaim space;
- one module of queries per table or concern: ``calls``, ``keys``, ``admin`` (admin tokens),
  ``sessions`` (web sign-ins), ``budgets``, ``alerts``, ``config`` (shared settings),
  ``config_files`` (the shared mode's prices.toml and alerts.toml), ``migrated`` (the mark
  ``migrate-to`` leaves in the file it copied),
  ``reports`` (reports, pages, exports, repricing), ``lifecycle`` (retention), ``subjects``
  (GDPR export and erase), ``synthetic`` (benchmark data).

The proxy's writer thread, which feeds this package, is ``addon/writer.py``. A shared backend can
replace this package without touching the proxy, the CLI or the web app.
"""

from .connection import ReadTooLong, StoreBusy, atomic, doing, reading, writing
from .errors import StoreError

__all__ = ["ReadTooLong", "StoreBusy", "StoreError", "atomic", "doing", "reading", "writing"]
