"""What ``prices import`` and ``alerts import`` share: reading the given file, and saying which
local files the shared mode does not read (addon/core/config_files.py)."""

from __future__ import annotations

from pathlib import Path

import click

from addon.core import config_files


def read_text(file: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"Cannot read {file}: {exc}") from None


def say_not_read(home: Path) -> None:
    for path in config_files.not_read(home):
        click.echo(f"({path} is not read in the shared mode; `aispendtrack {path.stem} import {path}` puts it "
                   f"in the shared store.)", err=True)
