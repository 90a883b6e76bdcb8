"""``aispendtrack export``: every matching row, streamed to a file or standard output."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from addon.core import home as home_dir
from addon.core.reports import Selection
from addon.core.spool import filled
from addon.core.store import reading
from addon.core.store import reports as report_rows
from addon.core.wording import plural

from .options import selection_options
from .output import out_option, written_whole
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
    total = write_calls(obj.home, selection, fmt, out, quiet=quiet)
    if out:
        click.echo(f"Wrote {plural(total or 0, 'call')} to {out}.", err=True)


def write_calls(home: Path, selection: Selection, fmt: str, out: str | None = None, newest: int | None = None,
                quiet: bool = False) -> int | None:
    """The one way calls leave as a file (also `calls --format csv|json`): to ``out`` or standard output.
    Returns how many were written when known."""
    # To standard output through a spool: a reader at the end of a pipe (| less) may stop reading
    # for as long as it likes, and must not hold the database while the proxy needs it.
    spool = None
    total = None
    with reading(home_dir.db_path(home), long_read=True) as con:
        if newest is None:
            total = report_rows.count(con, selection)
        with running(f"Exporting {plural(total, 'call')}" if total else "Exporting calls", quiet):
            if out:
                with written_whole(out):
                    report_rows.copy_out(con, selection, out, fmt, newest)
            else:
                spool = filled(home, lambda path: report_rows.copy_out(con, selection, path, fmt, newest))
    if spool is not None:
        with written_whole(None):
            sys.stdout.flush()
            for chunk in spool.chunks():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    return total
