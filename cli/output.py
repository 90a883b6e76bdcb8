"""Printing rows as a table, JSON or CSV; one place so every command formats alike."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import click

from addon.core.serialize import dumps, json_row

FORMATS = ("table", "json", "csv")


def out_option(help: str):
    """``--out FILE``: refused before any work if its directory does not exist or is not writable."""
    return click.option("--out", type=click.Path(dir_okay=False, writable=True), callback=_writable_target,
                        help=help)


def _writable_target(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    directory = Path(value).expanduser().resolve().parent
    if not directory.is_dir():
        raise click.BadParameter(f"the directory {directory} does not exist; create it first.")
    if not os.access(directory, os.W_OK):
        raise click.BadParameter(f"the directory {directory} is not writable.")
    return value


# The errors of a write that ran out of room or hit a bad device, as opposed to those of the
# database being read (a file that is not DuckDB's, a permission): the latter keep their own words.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


@contextlib.contextmanager
def written_whole(out: str | None) -> Iterator[None]:
    """A failed write of an export to ``out`` (None: standard output), a full disk or a device that
    takes nothing, as one line that says the output is incomplete, not a traceback."""
    import duckdb

    from addon.core.store import StoreError

    try:
        yield
    except StoreError as exc:  # the store went away mid-export (a restarting owner, PostgreSQL)
        if out is None:
            raise
        raise click.ClickException(f"{exc}. What was written to {out} is incomplete.") from None
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise click.ClickException(f"could not write {out or 'to standard output'}: {exc.strerror}. What was "
                                   f"written is incomplete.") from None
    except duckdb.IOException as exc:  # DuckDB writing the file itself (COPY ... TO)
        if out is None or out not in str(exc):
            raise
        raise click.ClickException(f"could not write {out}: {str(exc).partition(': ')[2] or exc}. What was "
                                   f"written is incomplete.") from None


MAX_NAME = 100  # a key's or a team's name, in characters
NO_TEAM = "(no team)"  # how tables name the calls of keys in no team


def printable_name(value: str, what: str, hint: str) -> str:
    """A name as given, trimmed: 1 to MAX_NAME printable characters (a newline or an escape sequence
    in a key's name split the tables and reached terminals raw), else an error naming ``what``."""
    name = value.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise click.BadParameter(f"{what} is 1 to {MAX_NAME} printable characters, got {value[:120]!r}",
                                 param_hint=hint)
    return name


def limit_said(given: int | None, before: int | None, period: str, otherwise: str) -> str:
    """One period's limit after a set-limit, and what it was when that changed; ``otherwise``: what
    a limit not given becomes (a key's own hourly cap of 100 went back to its plan's unmentioned)."""
    was = f" (was {before:,})" if before is not None and before != given else ""
    return f"{given:,} per {period}{was}" if given is not None else f"{otherwise}{was}"


def check_port_free(host: str, port: int, flag: str) -> None:
    """Fail before printing a banner or creating anything when the port is taken."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers themselves bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror or exc}): another "
                                       f"process has it, perhaps a proxy already running. Choose another "
                                       f"port with {flag} PORT.") from None


def format_option(default: str = "table"):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default=default, show_default=True,
                        help="Output format.")


def emit(rows: Sequence[dict], fmt: str, table: Sequence[tuple[str, Callable[[dict], str], str]]) -> None:
    """``table`` lists (heading, cell function, "<" or ">") for the human-readable form."""
    if fmt == "json":
        click.echo(dumps([json_row(row) for row in rows]))
    elif fmt == "csv":
        if rows:  # every row's fields, in the order first seen: a list may mix kinds (prices check's)
            fields = list(dict.fromkeys(name for row in rows for name in row))
            writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: _csv_value(v) for k, v in json_row(row).items()} for row in rows)
    else:
        click.echo(render_table(rows, table))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(value):
    """As `aispendtrack export` writes CSV: true/false, and text that a spreadsheet would run as a
    formula (a tag like =HYPERLINK(...)) with a leading apostrophe; numbers stay numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def render_table(rows: Sequence[dict], table: Sequence[tuple[str, Callable[[dict], str], str]]) -> str:
    cells = [[heading for heading, _, _ in table]] + [[cell(row) for _, cell, _ in table] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(table))]
    lines = []
    for line in cells:
        parts = [text.rjust(w) if align == ">" else text.ljust(w)
                 for text, w, (_, _, align) in zip(line, widths, table)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def tokens(value: int | None) -> str:
    return f"{value:,}" if value else "0"


def compact(value: float | int | None) -> str:
    """1234 -> 1,234; 12345 -> 12.3k; 9983790 -> 9.98M: numbers that fit narrow columns."""
    if value is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(value) >= limit:
            scaled = value / (limit if suffix != "k" else 1e3)
            return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:,.0f}"


def seconds(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"
