"""``prices.toml`` and ``alerts.toml``: where every process reads them.

Embedded, they are files in the data directory, as ever. In the shared mode every replica must
price and alert alike, so the deployment keeps one copy of each in the shared store
(store/config_files.py): set from any machine with ``aispendtrack prices import FILE`` and
``aispendtrack alerts import FILE``, carried there by ``migrate-to``. A replica's own files are
then not read (the proxy says so at start). The proxy re-reads the prices on every key refresh
(2 s); the alert channels are read afresh on every alert round and every command.

Secrets stay out of the store as they stay out of the file: alerts.toml names the environment
variables that hold passwords, webhook secrets and URLs (``password_env``, ``secret_env``,
``url_env``), and each replica reads its own environment. (A ``url`` written in the file is stored
as written, readable by whoever reads the catalog; ``alerts import`` says so.) Nothing prints the
stored text; channels are shown by name and host only.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pricing
from pricing import overrides

from . import home as home_dir
from . import notify
from .store import config_files as stored
from .store import reading, shared, writing
from .wording import plural

log = logging.getLogger(__name__)
PRICES = overrides.FILE_NAME
ALERTS = notify.FILE_NAME


@dataclass(frozen=True)
class ConfigFile:
    name: str
    text: str | None  # None: there is none
    origin: str       # where it is, for messages: a path, or "prices.toml in the shared store at host:5432/db"
    in_shared_store: bool = False  # the deployment's copy, not a file

    @property
    def document(self) -> dict:
        """The parsed TOML (the [spikes] and [reconcile] sections of alerts.toml); validated on import."""
        return tomllib.loads(self.text) if self.text else {}


def read(home: Path, name: str, con=None) -> ConfigFile:
    """The current ``name``: the data directory's file, or in the shared mode the deployment's copy
    (read on ``con`` when given, the writer's own connection)."""
    cfg = shared.configured()
    if cfg is None:
        path = home / name
        return ConfigFile(name, path.read_text(encoding="utf-8") if path.exists() else None, str(path))
    if con is None:
        with reading(home_dir.db_path(home)) as con:
            return read(home, name, con)
    found = stored.get(con, name)
    return ConfigFile(name, found[0] if found else None, f"{name} in the shared store at {cfg.where}",
                      in_shared_store=True)


def write(home: Path, name: str, text: str) -> ConfigFile:
    """Replace ``name`` with ``text`` (validated by the caller): the file, or the deployment's copy."""
    if shared.configured() is None:
        path = home / name
        partial = path.with_name(f".{name}.partial")
        partial.write_text(text, encoding="utf-8")  # private: the data directory's umask
        os.replace(partial, path)  # a proxy reloading it sees the old file or the new, never half of one
    else:
        with writing(home_dir.db_path(home)) as con:
            stored.put(con, name, text, dt.datetime.now(dt.UTC))
    return read(home, name)


def not_read(home: Path) -> list[Path]:
    """In the shared mode, this directory's own prices.toml and alerts.toml, which nothing reads."""
    if shared.configured() is None:
        return []
    return [home / name for name in (PRICES, ALERTS) if (home / name).exists()]


def price_file(found: ConfigFile) -> pricing.PriceFile:
    return overrides.parse(found.text or "", found.origin, name=found.name)


def channels(found: ConfigFile) -> dict[str, notify.Channel]:
    return notify.parse(found.text or "", found.origin)


def price_book(home: Path) -> pricing.PriceBook:
    """The book a command prices with, by the list-price data the proxy uses (the version stored
    last: price_data.py); raises PriceFileError with the file's message."""
    from . import price_data

    with reading(home_dir.db_path(home)) as con:
        price_data.use_stored(con)
    if shared.configured() is None:
        return pricing.PriceBook(home / PRICES)
    book = pricing.PriceBook(None)
    book.use_overrides(price_file(read(home, PRICES)))
    return book


class SharedPrices:
    """The proxy's book in the shared mode: the deployment's overrides, re-read on each key refresh
    and swapped in when their text changed. A copy that does not parse (written by another version)
    leaves the last good one in use, said once."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.book = pricing.PriceBook(None)
        self._text: str | None = None

    def refresh(self, con) -> None:
        found = read(self.home, PRICES, con)
        if found.text == self._text:
            return
        self._text = found.text
        try:
            self.book.use_overrides(price_file(found))
        except pricing.PriceFileError as exc:
            log.error("keeping the previous price overrides: %s", exc)
            return
        log.info("price overrides from %s: %s", found.origin, plural(len(self.book.overrides), "entry", "entries"))
