"""The only place that speaks SQL or opens the database.

``connection`` opens the file (with the retry that one-writer-per-file needs), ``migrations``
owns the schema, ``calls`` and ``keys`` hold the queries, ``writer`` is the proxy's single
writer thread. A shared backend can replace this package without touching addon, CLI or web.
"""

from .connection import ReadTooLong, StoreBusy, reading, writing

__all__ = ["ReadTooLong", "StoreBusy", "reading", "writing"]
