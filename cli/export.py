"""``aispendtrack export``: every matching row, streamed to a file or standard output."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading

import click

from addon.core.reports import Selection
from addon.core.store import reading
from addon.core.store import reports as report_rows

from .options import selection_options
from .output import out_option


@click.command()
@click.option("--format", "fmt", type=click.Choice(list(report_rows.EXPORT_FORMATS)), default="csv", show_default=True,
              help="json is one array; jsonl one object per line.")
@selection_options
@out_option("Write here instead of standard output.")
@click.pass_obj
def export(obj, fmt: str, selection, out: str | None) -> None:
    """Export calls (metadata only) in constant memory, whatever their number."""
    if out is None and fmt == "parquet" and sys.stdout.isatty():
        raise click.UsageError("parquet is binary: write it to a file with --out FILE.")
    total = write_calls(obj.db, selection, fmt, out)
    if out:
        click.echo(f"Wrote {total:,} calls to {out}.", err=True)


def write_calls(db, selection: Selection, fmt: str, out: str | None = None, newest: int | None = None) -> int | None:
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
            if total and sys.stderr.isatty():
                _copy_with_progress(con, selection, target, fmt, total)
            else:
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


def _copy_with_progress(con, selection, target: str, fmt: str, total: int) -> None:
    """DuckDB runs the COPY on a thread; this one shows its progress on the terminal (stderr)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            report_rows.copy_out(con, selection, target, fmt)
        except BaseException as exc:  # re-raised below, on the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    with click.progressbar(length=100, label=f"Exporting {total:,} calls", file=sys.stderr) as bar:
        done = 0
        while worker.is_alive():
            worker.join(0.2)
            progress = max(int(con.query_progress()), done) if worker.is_alive() else 100
            bar.update(progress - done)
            done = progress
    if failure:
        raise failure[0]
