"""Progress on long work: on a terminal (a real pseudo-terminal here) it shows; piped, or with
--quiet, the output is the result lines alone."""

from __future__ import annotations

import datetime as dt
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from addon.core import home as home_dir
from addon.core.store import synthetic, writing

from .helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def on_terminal(home: Path, *args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; (exit code, what the terminal showed, then what
    went to standard output)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "cli", "--home", str(home), *args], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    out, _ = process.communicate(timeout=120)
    reader.join(10)
    os.close(leader)
    return process.returncode, shown.decode(errors="replace") + out.decode()


def piped(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--home", str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("progress") / "home"
    home.mkdir()
    with writing(home_dir.db_path(home)) as con:
        synthetic.generate(con, 200_000, end=dt.datetime.now(dt.UTC), days=10, customers=50)
    return home


def test_export_shows_progress_on_a_terminal_only(home, tmp_path):
    code, shown = on_terminal(home, "export", "--out", str(tmp_path / "a.csv"))
    assert code == 0 and "Exporting 200,000 calls ..." in shown and "Wrote 200,000 calls" in shown
    quiet_code, quiet = on_terminal(home, "export", "--quiet", "--out", str(tmp_path / "b.csv"))
    assert quiet_code == 0 and "Exporting" not in quiet and "Wrote 200,000 calls" in quiet
    result = piped(home, "export", "--out", str(tmp_path / "c.csv"))
    assert result.returncode == 0 and result.stderr == f"Wrote 200,000 calls to {tmp_path / 'c.csv'}.\n"
    on_tty, in_pipe = ((tmp_path / name).read_text().splitlines() for name in ("a.csv", "c.csv"))
    assert on_tty[0] == in_pipe[0] and sorted(on_tty) == sorted(in_pipe)  # progress never in the data


def test_reprice_purge_and_gdpr_delete_show_what_they_do(home):
    code, shown = on_terminal(home, "reprice", "--since", "2d")
    assert code == 0 and "Repricing" in shown and "100%" in shown and "Checked " in shown
    assert "Repricing" not in piped(home, "reprice", "--since", "2d", "--dry-run").stderr
    code, shown = on_terminal(home, "purge", "--older-than", "9d")
    assert code == 0 and "Purging ..." in shown and "Purged " in shown
    code, shown = on_terminal(home, "gdpr", "delete", "--customer", "cust-1", "--yes")
    assert code == 0 and "Erasing customer" in shown and "Erased customer" in shown
    code, shown = on_terminal(home, "gdpr", "delete", "--customer", "cust-2", "--yes", "--quiet")
    assert code == 0 and "Erasing" not in shown and "Erased customer" in shown
    assert "--quiet" in run_cli(home, "purge", "--help")
