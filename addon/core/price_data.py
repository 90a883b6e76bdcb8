"""The list-price data kept current at run time: fetched on start and every ``--prices-refresh``
from ``--prices-url``, one version per deployment, kept in the store.

Who does what:
- the proxy runs a ``PriceRefresher`` thread (never on the request path: calls are priced with
  the data in use until a new one is swapped in whole, listprices.use);
- one process fetches at a time (in the shared mode, the replica holding the PRICES_LOCK advisory
  lock); a good document is stored in ``price_snapshots`` with its id and time; a refused one
  (pricing/snapshots.py says which) is logged once and the last good data stays in use;
- every process loads the newest stored version within a minute (``POLL_S``), and commands load it
  when they start (``use_stored``), so a restart without network prices as before it;
- a fetch that prices models left unpriced reprices their calls (reprice.heal_unpriced).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

from pricing import PriceBook, PriceData, PriceDataError, listprices, snapshots

from . import reprice
from .store import lake, reading, shared_schema, writing
from .store import price_snapshots as stored
from .wording import plural

log = logging.getLogger(__name__)
POLL_S = 60.0  # how soon every process uses a version another one stored
OFF = "off"


def use_stored(con) -> PriceData | None:
    """Price with the newest stored version (on ``con``), if any and not in use already; returns it."""
    latest = stored.latest(con)
    if latest is None or latest.id == listprices.current().id:
        return None
    text = stored.document(con, latest.id)
    try:
        data = snapshots.parse(text or "", latest.source, latest.fetched_at)
    except PriceDataError as exc:  # stored by another version of genai-prices
        log.error("keeping the price data in use (%s): the stored version %s is not usable: %s",
                  listprices.current().label, latest.id, exc)
        return None
    listprices.use(data)
    return data


def refresh(db: Path, url: str, now: dt.datetime) -> PriceData:
    """Fetch, validate and store the document at ``url``; returns it (in use from now on).
    Raises PriceDataError when it is refused."""
    data = snapshots.parse(snapshots.fetch(url), url, now)
    snapshots.check_coverage(data, listprices.current())
    with writing(db) as con:
        assert data.text is not None
        stored.put(con, data.id, url, len(data.models()), data.text, now)
    listprices.use(data)
    return data


class PriceRefresher(threading.Thread):
    """Keeps the list prices current in a running proxy (see the module's docstring)."""

    def __init__(self, db: Path, url: str, interval_s: float, book: PriceBook) -> None:
        super().__init__(name="aispendtrack-prices", daemon=True)
        self.db, self.url, self.interval_s, self.book = db, url, interval_s, book
        self._next_fetch = 0.0  # monotonic: no sooner after this process's last attempt
        self._first_round_done = False
        self._turn = lake.Turn(shared_schema.PRICES_LOCK)
        self._said: set[str] = set()
        self._stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self._round()
            except Exception:
                log.exception("price data refresh failed; trying again in %.0f s", self._poll_s)
            if self._stopping.wait(self._poll_s):
                break
        self._turn.close()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def _poll_s(self) -> float:
        return min(POLL_S, self.interval_s)

    def _round(self) -> None:
        with reading(self.db) as con:
            use_stored(con)
            latest = stored.latest(con)
        if self.url == OFF or time.monotonic() < self._next_fetch:
            return
        now = dt.datetime.now(dt.UTC)
        # On start, fetched unless a replica just did; then when the stored version is an interval old.
        fresh_for = self.interval_s if self._first_round_done else min(self.interval_s, POLL_S)
        self._first_round_done = True
        if latest is not None and (now - latest.checked_at).total_seconds() < fresh_for:
            return
        with self._turn.mine() as mine:
            if mine:
                self._fetch(now)

    def _fetch(self, now: dt.datetime) -> None:
        self._next_fetch = time.monotonic() + self.interval_s
        before = listprices.current().id
        try:
            data = refresh(self.db, self.url, now)
        except PriceDataError as exc:
            self._say(f"price data refused, keeping {listprices.current().label} in use: {exc}")
            return
        self._said.clear()  # a later failure is news again
        if data.id != before:
            log.info("price data %s from %s: %s", data.id, self.url, plural(len(data.models()), "model"))
            self._heal()

    def _heal(self) -> None:
        healed = reprice.heal_unpriced(self.db, self.book)
        for (provider, model), calls in sorted(healed.items()):
            log.info("priced %s of %s/%s stored without a price (new price data)",
                     plural(calls, "call"), provider, model)

    def _say(self, message: str) -> None:
        """Log a refusal once (the same one every interval would drown the log)."""
        if message not in self._said:
            self._said.add(message)
            log.error(message)


def start(db: Path, url: str, interval_s: float, book: PriceBook) -> PriceRefresher:
    """In the proxy, before the first call is priced: the stored version now (a local read; a failed
    one is logged and leaves the installed package's data), then the refresher's thread."""
    try:
        with reading(db) as con:
            use_stored(con)
    except Exception:
        log.exception("could not read the stored price data; pricing with %s until it can be",
                      listprices.current().label)
    refresher = PriceRefresher(db, url, interval_s, book)
    refresher.start()
    return refresher


def describe(latest: stored.Stored | None, now: dt.datetime) -> str:
    """Where the list prices in use come from and how old they are, for `prices check`."""
    data = listprices.current()
    if latest is None or latest.id != data.id:
        return f"List prices: {data.label} bundled data (none fetched yet: the proxy fetches --prices-url)"
    return (f"List prices: {data.label} ({plural(latest.models, 'model')}) from {latest.source}, first fetched "
            f"{latest.fetched_at:%Y-%m-%d %H:%M} UTC, last checked {latest.checked_at:%Y-%m-%d %H:%M} UTC "
            f"({age_text(now - latest.checked_at)} ago)")


def age_text(age: dt.timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return plural(seconds // size, unit)
    return plural(seconds, "second")
