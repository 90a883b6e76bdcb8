"""The list-price data kept current at run time: fetched on start and every ``--prices-refresh``
from ``--prices-url``, one version per deployment, kept in the store.

Who does what:
- the proxy runs a ``PriceRefresher`` thread (never on the request path: calls are priced with
  the data in use until a new one is swapped in whole, listprices.use);
- one process fetches at a time (in the shared mode, the replica holding the PRICES_LOCK advisory
  lock); a good document is stored in ``price_snapshots`` with its id and time; a refused one
  (pricing/snapshots.py says which) is logged once and the last good data stays in use;
- every process loads the newest stored version within a minute (``POLL_S``; the first one stored
  within seconds), and commands load it when they start (``use_stored``), so a restart without
  network prices as before it; the embedded mode's workers never fetch: their owner does;
- a fetch that prices models left unpriced reprices their calls (reprice.heal_unpriced).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

from pricing import PriceBook, PriceData, PriceDataError, listprices, snapshots

from . import metrics, reprice
from .redact import first_line
from .store import StoreError, lake, reading, shared_schema, writing
from .store import price_snapshots as stored
from .wording import plural

log = logging.getLogger(__name__)
POLL_S = 60.0  # how soon every process uses a version another one stored
FIRST_POLL_S = 2.0  # as POLL_S while none is stored: the first one is used at once
WAIT_LOG_S = 60.0  # a store away that long is said again (the same cause), not every poll
OFF = "off"
_unusable: set[str] = set()  # stored versions this process cannot read


def use_stored(con) -> PriceData | None:
    """Price with the newest stored version (on ``con``), or the installed package's data when none
    is stored; returns the data newly in use, None when it was in use already."""
    latest = stored.latest(con)
    if latest is None and listprices.current() is not listprices.BUNDLED:
        listprices.use(listprices.BUNDLED)
        return listprices.BUNDLED
    if latest is None or latest.id == listprices.current().id:
        return None
    if latest.id in _unusable:
        return None
    text = stored.document(con, latest.id)
    try:
        data = snapshots.parse(text or "", latest.source, latest.fetched_at)
    except PriceDataError as exc:  # stored by another version of genai-prices
        _unusable.add(latest.id)  # said once
        log.error("keeping the price data in use (%s): the stored version %s is not usable: %s",
                  listprices.current().label, latest.id, exc)
        return None
    listprices.use(data)
    return data


def versions_since(con, since: dt.datetime) -> list[PriceData]:
    """The stored versions in use since ``since`` (the one in force then first), oldest first; a
    version this genai-prices cannot read is left out (said in the log)."""
    found = []
    for version in stored.history(con, since):
        try:
            found.append(snapshots.parse(stored.document(con, version.id) or "", version.source, version.fetched_at))
        except PriceDataError as exc:
            log.error("price data %s left out: %s", version.id, exc)
    return found


def refresh(db: Path, url: str, now: dt.datetime) -> PriceData:
    """Fetch, validate and store the document at ``url``; returns it (in use from now on).
    Raises PriceDataError when it is refused."""
    source = snapshots.shown(url)
    data = snapshots.parse(snapshots.fetch(url), source, now)
    snapshots.check_coverage(data, listprices.current())
    listprices.check_not_free(data, listprices.current(), now)
    with writing(db) as con:
        assert data.text is not None
        stored.put(con, data.id, source, len(data.models()), data.text, now)
    listprices.use(data)
    return data


class PriceRefresher(threading.Thread):
    """Keeps the list prices current in a running proxy (see the module's docstring)."""

    def __init__(self, db: Path, url: str, interval_s: float, book: PriceBook) -> None:
        super().__init__(name="aispendtrack-prices", daemon=True)
        self.db, self.url, self.interval_s, self.book = db, url, interval_s, book
        self._next_fetch = 0.0  # monotonic: no sooner after this process's last attempt
        self._first_round_done = False
        self._heal_due = False
        self._turn = lake.Turn(shared_schema.PRICES_LOCK)
        self._said: set[str] = set()
        self._waiting: tuple[str, float] = ("", -1e9)  # the last wait logged, and when
        self._stopping = threading.Event()
        self.latest: stored.Stored | None = None  # the newest stored version, as of the last round

    def run(self) -> None:
        while True:
            try:
                self._round()
            except StoreError as exc:  # the store away (PostgreSQL, a worker's restarting owner), the file
                # busy: nothing wrong here, no traceback (one every 2 s while PostgreSQL was away), and
                # said again only when the cause changes or a minute later
                cause = first_line(exc, 300)
                if cause != self._waiting[0] or time.monotonic() - self._waiting[1] >= WAIT_LOG_S:
                    self._waiting = (cause, time.monotonic())
                    log.info("price data refresh waits (%s); trying again every %.0f s", cause, self._poll_s)
            except Exception:  # a warning: see _say
                log.warning("price data refresh failed; trying again in %.0f s", self._poll_s, exc_info=True)
            if self._stopping.wait(self._poll_s):
                break
        self._turn.close()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def _poll_s(self) -> float:
        if self.latest is None:  # nothing stored yet: another process (the owner, a replica) is fetching the first
            return min(FIRST_POLL_S, self.interval_s)
        return min(POLL_S, self.interval_s)

    def _round(self) -> None:
        with reading(self.db) as con:
            use_stored(con)
            self.latest = latest = stored.latest(con)
        now = dt.datetime.now(dt.UTC)
        if self._due(latest, now):
            with self._turn.mine() as mine:
                if mine:
                    self._fetch(now)
        if self._heal_due:
            self._heal()

    def _due(self, latest: stored.Stored | None, now: dt.datetime) -> bool:
        """On start, unless a replica has just fetched; then when the stored version is an interval
        old (whoever fetched it); never sooner than an interval after this process's last try."""
        if self.url == OFF or time.monotonic() < self._next_fetch:
            return False
        fresh_for = self.interval_s if self._first_round_done else min(self.interval_s, POLL_S)
        self._first_round_done = True
        return latest is None or (now - latest.checked_at).total_seconds() >= fresh_for

    def _fetch(self, now: dt.datetime) -> None:
        self._next_fetch = time.monotonic() + self.interval_s
        before = listprices.current().id
        try:
            data = refresh(self.db, self.url, now)
        except PriceDataError as exc:
            self._say(f"price data refused, keeping {listprices.current().label} in use: {exc}")
            return
        self.latest = stored.Stored(data.id, data.source, now, now, len(data.models()))
        self._said.clear()  # a later failure is news again
        if data.id != before:
            log.info("price data %s from %s: %s", data.id, data.source, plural(len(data.models()), "model"))
            self._heal_due = True

    def _heal(self) -> None:
        """Price the calls stored without a price that the new data prices (again next round if
        this fails: a conflicting write in the lake, a busy file)."""
        healed = reprice.heal_unpriced(self.db, self.book)
        self._heal_due = False
        for (provider, model), calls in sorted(healed.items()):
            log.info("priced %s of %s/%s stored without a price (new price data)",
                     plural(calls, "call"), provider, model)

    def _say(self, message: str) -> None:
        """Log a refusal once (the same one every interval would drown the log)."""
        if message not in self._said:
            self._said.add(message)
            # A warning, not an error: the last good data prices on, and mitmproxy ends a proxy that
            # logs an error while it starts (a price server refusing at once did that).
            log.warning(message)


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
    metrics.current().watch_prices(lambda: as_status(refresher.latest, dt.datetime.now(dt.UTC)))
    return refresher


def status(con, now: dt.datetime) -> dict:
    """The data in use by this process's prices (the newest stored version), for the API and /metrics."""
    use_stored(con)
    return as_status(stored.latest(con), now)


def as_status(latest: stored.Stored | None, now: dt.datetime) -> dict:
    """``latest``: the newest stored version; its times are those of the data in use if it is that."""
    data = listprices.current()
    found: dict[str, object] = {"label": data.label, "snapshot": data.id, "source": data.source,
                                "models": None, "fetched_at": None, "checked_at": None, "age_seconds": None}
    if latest is not None and latest.id == data.id:
        found.update(models=latest.models, fetched_at=latest.fetched_at, checked_at=latest.checked_at,
                     age_seconds=(now - latest.checked_at).total_seconds())
    return found


def describe(latest: stored.Stored | None, now: dt.datetime) -> str:
    """Where the list prices in use come from and how old they are, for `prices check`."""
    data = listprices.current()
    if latest is None or latest.id != data.id:
        return f"List prices: {data.label}, the installed package's data (none fetched: the proxy fetches --prices-url)"
    return (f"List prices: {data.label} ({plural(latest.models, 'model')}) from {latest.source}, first fetched "
            f"{latest.fetched_at:%Y-%m-%d %H:%M} UTC, last checked {latest.checked_at:%Y-%m-%d %H:%M} UTC "
            f"({age_text(now - latest.checked_at)} ago)")


def age_text(age: dt.timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return plural(seconds // size, unit)
    return plural(seconds, "second")
