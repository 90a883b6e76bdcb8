"""``aispendtrack export``: every matching row, streamed to a file or standard output."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import click

from addon.core.reports import Selection
from addon.core.store import reading
from addon.core.store import reports as report_rows
from addon.core.wording import plural

from .options import selection_options
from .output import out_option
from .progress import quiet_option, running


@click.command()
@click.option("--format", "fmt", type=click.Choice(list(report_rows.EXPORT_FORMATS)), default="csv", show_default=True,
              help="json is one array; jsonl one object per line.")
@selection_options
@out_option("Write here instead of standard output.")
@quiet_option
@click.pass_obj
def export(obj, fmt: str, selection, out: str | None, quiet: bool) -> None:
    """Export calls (metadata only) in constant memory, whatever their number."""
    if out is None and fmt == "parquet" and sys.stdout.isatty():
        raise click.UsageError("parquet is binary: write it to a file with --out FILE.")
    total = write_calls(obj.db, selection, fmt, out, quiet=quiet)
    if out:
        click.echo(f"Wrote {plural(total or 0, 'call')} to {out}.", err=True)


def write_calls(db, selection: Selection, fmt: str, out: str | None = None, newest: int | None = None,
                quiet: bool = False) -> int | None:
    """The one way calls leave as a file (also `calls --format csv|json`): to ``out`` or standard output.
    Returns how many were written when known."""
    # To standard output through a temporary file: a reader at the end of a pipe (| less) may stop
    # reading for as long as it likes, and must not hold the database while the proxy needs it.
    target = out or _spool_path(fmt)
    total = None
    try:
        with reading(db) as con:
            if newest is None:
                total = report_rows.count(con, selection)
            with running(f"Exporting {plural(total, 'call')}" if total else "Exporting calls", quiet):
                report_rows.copy_out(con, selection, target, fmt, newest)
        if out is None:
            _copy_to_stdout(target)
    finally:
        if out is None:
            os.unlink(target)
    return total


def _spool_path(fmt: str) -> str:
    fd, path = tempfile.mkstemp(prefix="aispendtrack-export-", suffix=f".{fmt}")
    os.close(fd)
    return path


def _copy_to_stdout(path: str) -> None:
    sys.stdout.flush()
    with open(path, "rb") as spool:
        shutil.copyfileobj(spool, sys.stdout.buffer, 1024 * 1024)
    sys.stdout.buffer.flush()
