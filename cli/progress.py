"""Progress of long work on the terminal (stderr), and nothing when it is not one or with --quiet.

Two kinds: ``Bar`` counts items the command itself loops over (reprice's calls); ``running`` shows,
for work done by DuckDB statements (export, purge, a GDPR rewrite, generating rows), how far the
statement running now is, as DuckDB measures it, with the time spent.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator

import click

from addon.core.store.connection import progress

POLL_S = 0.2


def quiet_option(command):
    return click.option("--quiet", "-q", is_flag=True, help="No progress on the terminal.")(command)


def shown(quiet: bool) -> bool:
    """Progress goes to a terminal only: a pipe or a log file gets the result lines alone."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def running(label: str, quiet: bool = False) -> Iterator[None]:
    """``label: 42%  3.1 s`` on stderr, redrawn while the body runs; erased at the end."""
    if not shown(quiet):
        yield
        return
    stop = threading.Event()
    started = time.monotonic()

    def draw() -> None:
        last = 0.0
        sys.stderr.write(f"{label} ...")  # at once: short work still says what it did
        sys.stderr.flush()
        while not stop.wait(POLL_S):
            done = progress()
            last = max(last, done) if done is not None else last
            share = f"{last:3.0f}%  " if last else ""
            sys.stderr.write(f"\r{label}: {share}{time.monotonic() - started:.1f} s ")
            sys.stderr.flush()

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sys.stderr.write("\r\033[K")  # the line is cleared: the command's own result line follows
        sys.stderr.flush()


class Bar:
    """A count of items on stderr, updated at most every POLL_S. ``total()`` is asked only when the
    bar is shown: counting costs a pass over the rows that a pipe or --quiet does not need."""

    def __init__(self, label: str, total: Callable[[], int], quiet: bool = False) -> None:
        length = total() if shown(quiet) else 0
        self._bar = click.progressbar(length=length, label=label, file=sys.stderr) if length else None
        self._pending = 0
        self._drawn = time.monotonic()

    def __enter__(self) -> Bar:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def advance(self, n: int = 1) -> None:
        if self._bar is None:
            return
        self._pending += n
        if time.monotonic() - self._drawn >= POLL_S:
            self._bar.update(self._pending)
            self._pending, self._drawn = 0, time.monotonic()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            # Done is 100%, even where the count given at the start was an estimate.
            self._bar.update((self._bar.length or 0) - self._bar.pos if exc[0] is None else self._pending)
            self._bar.__exit__(*exc)
