"""What deserves an alert now: crossed budgets, quota warnings and spend spikes, each sent once.

Run by the proxy every minute on a thread of its own (never on the request path), and by
``aispendtrack alerts check``. Everything is read from the store, so the CLI and the proxy agree.

Spike detection: for each scope (all calls, and each key, customer and feature that spent in the
current hour), the current hour's spend is compared with the same hour of day on the trailing
``spike_days`` days. With m the median of those and s = 1.4826 x their median absolute deviation
(a spread that one odd day cannot inflate), an alert fires when the hour's spend exceeds
m + k x max(s, 10% of m) and is at least ``spike_min_usd``. At least ``spike_min_history`` days
of history are needed. Defaults: k = 4, 7 days, at least 3 of them, $1. A steady series never
fires; a ramp of a few percent a day stays within the band; one alert per scope per hour at most.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shlex
import statistics
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pricing import PriceBook

from . import config_files, notify, retention
from .budgets import Budget, with_spend
from .money import usd
from .periods import day_start, hour_start, month_start
from .plans import limits_for
from .reconcile import daily
from .store import alerts as alert_rows
from .store import calls as call_rows
from .store import customer_order, lake, proxy_backfill, reading, shared, shared_schema, writing
from .store import keys as key_rows
from .store.transaction import is_write_conflict

log = logging.getLogger(__name__)
# Of each round at most, filling in rollups' proxy histograms (store/proxy_backfill.py); a day of
# 100M calls a year takes a few seconds, and the alerts of the next round must not wait for a year.
BACKFILL_S = 5.0
QUOTA_THRESHOLDS = (0.9, 0.75, 0.5)
UNPRICED_FOR = dt.timedelta(days=1)  # unpriced this long: no refresh is going to price it
UNPRICED_LOOKBACK = dt.timedelta(days=30)


@dataclass(frozen=True)
class SpikeSettings:
    k: float = 4.0
    days: int = 7
    min_history: int = 3
    min_usd: float = 1.0


def is_spike(history: list[float], current: float, settings: SpikeSettings = SpikeSettings()) -> float | None:
    """The threshold ``current`` exceeded, or None (too little history, or within the band)."""
    if len(history) < settings.min_history or current < settings.min_usd:
        return None
    median = statistics.median(history)
    spread = 1.4826 * statistics.median(abs(v - median) for v in history)
    threshold = median + settings.k * max(spread, 0.1 * median)
    return threshold if current > threshold else None


def candidates(db: Path, now: dt.datetime, zone: zoneinfo.ZoneInfo,
               settings: SpikeSettings) -> list[tuple[str, notify.Alert]]:
    """(dedupe key, alert) for everything that is alert-worthy now, sent or not."""
    today, month = day_start(now, zone), month_start(now, zone)
    found = []
    with reading(db) as con:
        for b in with_spend(con, now, zone):
            for period, limit, spent, start in (("daily", b["daily_usd"], b["spent_today_usd"], today),
                                                ("monthly", b["monthly_usd"], b["spent_this_month_usd"], month)):
                if limit is not None and spent >= limit:
                    # The amount is part of the key: a budget keeps its id when raised, and crossing
                    # the raised amount the same day is news again.
                    found.append((f"budget:{b['id']}:{period}:{start:%Y-%m-%d}:{limit:g}",
                                  _budget_alert(b, period, limit, spent)))
        counts = call_rows.counts_since(con, now, month)
        for _, key_id, plan, per_hour, per_month in key_rows.active(con):
            quota = limits_for(plan, per_hour, per_month).per_month
            used = counts.get(key_id, (0, 0))[1]
            crossed = next((t for t in QUOTA_THRESHOLDS if quota and used >= t * quota), None)
            if crossed and quota:
                found.append((f"quota:{key_id}:{month:%Y-%m}:{int(crossed * 100)}",
                              _quota_alert(key_id, plan, used, quota, crossed)))
        found += _spikes(con, now, settings)
        found += _unpriced(con, now)
    return found


def _unpriced(con, now: dt.datetime) -> list[tuple[str, notify.Alert]]:
    """A model whose calls have had no price for more than UNPRICED_FOR (a refresh of the list
    prices would have priced them, price_data.py): once per model and tier, naming the override."""
    return [(f"unpriced:{m['provider']}:{m['model']}:{m['service_tier'] or ''}", _unpriced_alert(m))
            for m in call_rows.unpriced_models(con, since=now - UNPRICED_LOOKBACK)
            if m["first_seen"] <= now - UNPRICED_FOR]


def _unpriced_alert(m: dict) -> notify.Alert:
    name = f"{m['provider']}/{m['model']}" + (f" ({m['service_tier']} tier)" if m["service_tier"] else "")
    # Quoted for TOML (a JSON string is a TOML basic string) and the shell: a model's name is the
    # upstream's text, and `m $(touch x)` or `x"\nmodel = "y` pasted as is would run or mean more.
    entry = (f'[[price]]\nprovider = {json.dumps(m["provider"])}\nmodel = {json.dumps(m["model"])}\n'
             + (f'service_tier = {json.dumps(m["service_tier"])}\n' if m["service_tier"] else "")
             + "input_mtok = ...\noutput_mtok = ...\n")
    reprice = shlex.join(["aispendtrack", "reprice", "--provider", m["provider"], "--model", m["model"]])
    return notify.Alert(
        "unpriced", f"AiSpendTrack: calls to {name} have no price",
        f"{m['calls']:,} calls to {name} since {m['first_seen']:%Y-%m-%d %H:%M} UTC have no price (shown as "
        f"'unpriced', never $0), and no price data fetched since knows the model. Add it to prices.toml with the "
        f"provider's rates per million tokens:\n\n{entry}\nthen `aispendtrack prices import prices.toml` and "
        f"`{reprice}`.",
        {"provider": m["provider"], "model": m["model"], "service_tier": m["service_tier"], "calls": m["calls"]})


def evaluate(db: Path, home: Path, now: dt.datetime, zone: zoneinfo.ZoneInfo,
             on_wait: Callable[[], None] | None = None) -> list[notify.Alert]:
    """Send what is new; returns the alerts sent. A broken channel file is logged, not raised.
    ``on_wait``: called once if another process is sending (see ``one_sender``)."""
    found = config_files.read(home, config_files.ALERTS)
    try:
        channels = list(config_files.channels(found).values())
    except notify.ChannelError as exc:
        log.error("alerts not sent: %s", exc)
        return []
    return send_new(db, channels, candidates(db, now, zone, _settings(found)), now, on_wait)


# A channel that failed an alert is tried again while the alert still stands (a budget still
# crossed, a spike's hour), RETRY_FIRST after its first failure, then twice as long each time, for
# up to RETRY_FOR after the first try: ~10 tries, where one failing minute of a mail server lost it.
RETRY_FIRST = dt.timedelta(minutes=1)
RETRY_FOR = dt.timedelta(hours=24)


def send_new(db: Path, channels: list[notify.Channel], found: list[tuple[str, notify.Alert]],
             now: dt.datetime | None = None, on_wait: Callable[[], None] | None = None) -> list[notify.Alert]:
    """Deliver the alerts (by dedupe key) never sent to every channel, and again to a channel that
    failed one when its retry is due (``_due``); returns the alerts sent for the first time. A
    channel added later gets only alerts new since."""
    now = now or dt.datetime.now(dt.UTC)
    if not found:  # most rounds: no lock taken (in the shared mode, a PostgreSQL session)
        return []
    with one_sender(db, on_wait) as sending:
        notify.record_unrecorded(db)  # sent by an earlier round whose record the store did not take
        with reading(db) as con:
            tried = alert_rows.attempts(con, [key for key, _ in found])
        sends = []
        for key, alert in found:
            if key not in tried:
                sends.append(notify.Send(alert, channels, key))
            elif again := [c for c in channels if c.name in tried[key] and _due(tried[key][c.name], now)]:
                sends.append(notify.Send(alert, again, key))
        delivered = notify.deliver_all(db, sends, sending)
        if not sending():
            log.warning("alerts: the turn to send ended with the PostgreSQL session holding it (a restart?); "
                        "alerts not sent yet wait for the next round")
    return [send.alert for send, done in zip(sends, delivered, strict=True)
            if send.dedupe_key not in tried and any(d.tried for d in done)]


def _due(attempts: alert_rows.Attempts, now: dt.datetime) -> bool:
    if attempts.delivered or now - attempts.first > RETRY_FOR:
        return False
    return now >= attempts.last + RETRY_FIRST * 2 ** (attempts.failures - 1)


_SENDING_LOCK = ".alerts-sending.lock"  # beside the database, in the embedded mode


@contextlib.contextmanager
def one_sender(db: Path, on_wait: Callable[[], None] | None = None) -> Iterator[Callable[[], bool]]:
    """One process at a time reads which alerts were sent, sends the others and records them: the
    proxy's round and `aispendtrack alerts check` run at once sent an alert twice (a slow channel
    held the gap open for up to ~40 s). A lock file beside the database in the embedded mode; in
    the shared mode a PostgreSQL advisory lock, whichever replica or host asks. Yields whether the
    turn is still this process's: an advisory lock ends with its session (PostgreSQL restarted),
    and another replica may take it then; the sender starts no further send. ``on_wait``: called
    once when another process has the turn, before waiting for it (a round waiting on a slow
    channel can hold it a minute or more: `alerts check` sat silent for two)."""
    cfg = shared.configured()
    if cfg is not None:
        control = shared.ControlConnection(cfg)
        try:
            if not control.execute("SELECT pg_try_advisory_lock(?)", [shared_schema.ALERTS_LOCK]).fetchone()[0]:
                if on_wait is not None:
                    on_wait()
                control.execute("SELECT pg_advisory_lock(?)", [shared_schema.ALERTS_LOCK])
            yield lambda: not control.broken()  # unlocked with the session
        finally:
            control.close()
        return
    fd = os.open(db.with_name(_SENDING_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield lambda: True
    finally:
        os.close(fd)


class Evaluator(threading.Thread):
    """Alerts every ``interval`` seconds, the retention purge every ``purge_interval``, the proxy
    histograms older rollups lack (store/proxy_backfill.py), closed weeks of rollups into customer
    order (store/customer_order.py, embedded mode) and, in the shared mode, the lake's
    maintenance, off the request path; failures are logged and tried
    again. With several replicas, one at a time does each round (lake.Turn), so an alert is
    sent once, not once per replica."""

    def __init__(self, db: Path, home: Path, zone: zoneinfo.ZoneInfo, interval: float = 60.0,
                 purge_interval: float = 86_400.0, book: PriceBook | None = None,
                 base_urls: dict[str, str] | None = None):
        super().__init__(name="aispendtrack-alerts", daemon=True)
        self.db, self.home, self.zone, self.interval = db, home, zone, interval
        # The daily reconciliation (reconcile/daily.py) prices the providers' figures with our book.
        self.book, self.base_urls = book, base_urls or {}
        daily.warn_of_admin_keys(self.base_urls)
        self._reconcile_due = time.monotonic()
        self._reconciler: threading.Thread | None = None
        self.purge_interval = purge_interval
        self._purge_due = time.monotonic()  # the first purge comes with the first evaluation
        self._maintenance_due = time.monotonic() + lake.MAINTENANCE_INTERVAL_S
        self._turn = lake.Turn()
        self._stop = threading.Event()
        self._said: set[str] = set()  # the refused channels already logged: once each, not every round
        self._backfilled = False  # no rollup row left without a proxy histogram (m032)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self._turn.mine() as mine:
                    if mine:
                        self._round()
            except Exception:
                log.exception("could not take this replica's turn for alerts; trying again in %.0f s", self.interval)
        self._turn.close()

    def _round(self) -> None:
        self._say_refused()
        try:
            evaluate(self.db, self.home, dt.datetime.now(dt.UTC), self.zone)
        except Exception:
            log.exception("alert evaluation failed; trying again in %.0f s", self.interval)
        if time.monotonic() >= self._purge_due:
            self._purge()
        if not self._backfilled:
            self._backfill()
        if self._backfilled and shared.configured() is None:  # the backfill's rows would undo the order
            self._order_rollups()
        if self.book is not None and time.monotonic() >= self._reconcile_due:
            self._reconcile()
        if shared.configured() is not None and time.monotonic() >= self._maintenance_due:
            try:
                with writing(self.db) as con:
                    lake.maintain(con, dt.datetime.now(dt.UTC))
                self._maintenance_due = time.monotonic() + lake.MAINTENANCE_INTERVAL_S
            except Exception:
                log.exception("lake maintenance failed; trying again in %.0f s", self.interval)

    def _say_refused(self) -> None:
        """Log each channel that cannot be used (a webhook whose secret is not set) once; its
        alerts are recorded as not delivered, with the reason, every time."""
        try:
            channels = config_files.channels(config_files.read(self.home, config_files.ALERTS)).values()
        except notify.ChannelError:
            return  # evaluate() logs it
        for reason in filter(None, (channel.unusable() for channel in channels)):
            if reason not in self._said:
                self._said.add(reason)
                log.error("alerts are not sent: %s.", reason)

    def _reconcile(self) -> None:
        """At most hourly, on a thread of its own: a provider's usage API may take minutes (up to
        reconcile.http.RUN_DEADLINE_S), and a crossed budget's alert must not wait for it."""
        self._reconcile_due = time.monotonic() + 3600
        if self._reconciler is not None and self._reconciler.is_alive():
            return  # the last one is still within its deadline
        self._reconciler = threading.Thread(target=self._reconcile_in_turn, name="aispendtrack-reconcile",
                                            daemon=True)
        self._reconciler.start()

    def _reconcile_in_turn(self) -> None:
        """Each provider once per UTC day (daily.run skips what was checked), one replica at a time."""
        assert self.book is not None
        turn = lake.Turn(shared_schema.RECONCILE_LOCK)
        try:
            with turn.mine() as mine:
                if not mine:
                    return
                found = daily.run(self.db, self.home, self.book, self.base_urls, dt.datetime.now(dt.UTC))
                if found:
                    channels = config_files.channels(config_files.read(self.home, config_files.ALERTS))
                    send_new(self.db, list(channels.values()), found)
        except Exception:
            log.exception("reconciliation failed; trying again in an hour")
        finally:
            turn.close()

    def _purge(self) -> None:
        try:
            result = retention.purge(self.db, dt.datetime.now(dt.UTC), audited=False)
        except Exception:
            log.exception("retention purge failed; trying again in %.0f s", self.interval)
            return
        self._purge_due = time.monotonic() + self.purge_interval
        if result.deleted and result.deleted["calls"]:
            log.info("retention: purged %d calls past their plan's retention (their sums stay in the rollups)",
                     result.deleted["calls"])

    def _backfill(self) -> None:
        """Proxy histograms for the rollups summed before m032, oldest day first, for BACKFILL_S."""
        deadline, days = time.monotonic() + BACKFILL_S, 0
        try:
            while time.monotonic() < deadline and not self._stop.is_set():
                with writing(self.db) as con:
                    if proxy_backfill.fill_oldest(con) is None:
                        self._backfilled = True
                        break
                days += 1
        except Exception:
            log.exception("filling in the rollups' proxy histograms failed; trying again in %.0f s", self.interval)
        if days:
            log.info("rollups: proxy histograms filled in for %d day(s) summed before they were kept%s", days,
                     "; none left" if self._backfilled else "")

    def _order_rollups(self) -> None:
        """A closed week of the 15-minute rollups into customer order (store/customer_order.py): one
        a round, so that after an upgrade a year of weeks does not hold up the alerts (at 100M
        calls a year a week takes 6-26 s)."""
        try:
            with writing(self.db) as con:
                week = customer_order.order_oldest(con, dt.datetime.now(dt.UTC))
        except Exception as exc:
            if is_write_conflict(exc):
                # A reprice or an erase changed the same rows first; it sends the ordering back to their week.
                log.info("rollups: a week left out of customer order this round (its rows were being changed)")
            else:
                log.exception("putting a week of rollups in customer order failed; trying again in %.0f s",
                              self.interval)
            return
        if week is not None:
            log.info("rollups: the week from %s put in customer order", week.date().isoformat())

    def stop(self) -> None:
        self._stop.set()


def _spikes(con, now: dt.datetime, settings: SpikeSettings) -> list[tuple[str, notify.Alert]]:
    hour = hour_start(now).replace(tzinfo=None)
    found = []
    for scope in (None, "key", "customer", "feature"):
        series: dict[str, dict[dt.datetime, float]] = {}
        for at, value, spend in alert_rows.hourly_spend(con, (hour - dt.timedelta(days=settings.days))
                                                        .replace(tzinfo=dt.UTC), scope):
            series.setdefault(value, {})[at] = spend
        for value, by_hour in series.items():
            current = by_hour.get(hour, 0.0)
            history = [by_hour.get(hour - dt.timedelta(days=d), 0.0) for d in range(1, settings.days + 1)
                       if hour - dt.timedelta(days=d) >= min(by_hour)]
            threshold = is_spike(history, current, settings)
            if threshold is not None:
                label = "all calls" if scope is None else f"{scope} {value}"
                found.append((f"spike:{scope or 'all'}:{value}:{hour:%Y-%m-%dT%H}", notify.Alert(
                    "spike", alert_rows.spike_subject(label),
                    f"Spend for {label} in the hour from {hour:%Y-%m-%d %H:00} UTC is {usd(current)}, above the "
                    f"alert threshold of {usd(threshold)} (the same hour on the last {len(history)} days: median "
                    f"{usd(statistics.median(history))}). Look at the report page or "
                    f"`aispendtrack report --by model --since 2h` to see what changed.",
                    {"scope": scope or "all", "value": value, "spend_usd": current, "threshold_usd": threshold})))
    return found


def _budget_alert(row: dict, period: str, limit: Decimal, spent: Decimal) -> notify.Alert:
    b = Budget.from_row(row)
    action = "Calls in this scope are blocked until the period ends." if b.block else "Calls are not blocked."
    return notify.Alert("budget", alert_rows.budget_subject(period, b.label()),
                        f"{b.label()} has spent {usd(spent)} of its {period} budget of {usd(limit)} "
                        f"({spent / limit:.0%}). {action} Raise it with `aispendtrack budgets set "
                        f"{b.set_args} --{period} USD`, or look at the report page for where the money went.",
                        {"budget_id": b.id, "period": period, "spent_usd": float(spent), "budget_usd": float(limit)})


def _quota_alert(key_id: int, plan: str, used: int, quota: int, crossed: float) -> notify.Alert:
    return notify.Alert("quota", f"AiSpendTrack: key {key_id} has used {crossed:.0%} of its monthly quota",
                        f"Key {key_id} ({plan} plan) has made {used:,} of its {quota:,} calls this month "
                        f"({used / quota:.0%}). At 100% its calls get a 429 until the month ends. Raise it with "
                        f"`aispendtrack keys set-limit {key_id} --per-month N` or another plan.",
                        {"key_id": key_id, "used": used, "quota": quota, "threshold": crossed})


def _settings(found: config_files.ConfigFile) -> SpikeSettings:
    spikes = found.document.get("spikes", {})
    defaults = SpikeSettings()
    return SpikeSettings(k=float(spikes.get("k", defaults.k)), days=int(spikes.get("days", defaults.days)),
                         min_history=int(spikes.get("min_history", defaults.min_history)),
                         min_usd=float(spikes.get("min_usd", defaults.min_usd)))
