"""The owner of the embedded data under ``aispendtrack proxy --workers N``: a child of the parent.

The workers (cli/workers.py) proxy; this process opens the DuckDB file once (store/owner.py) and
keeps it open while they run. The parent starts it before the workers and starts another if it
dies (``kill -9``): the workers go on proxying meanwhile, their rows waiting in memory and, past
1 s, in their spill files, sent when the owner answers again. A worker that dies meanwhile is
replaced once the owner serves again (it needs the owner to start).

A worker never opens the file: it sends its finished rows, in the batches its writer flushes, over
the owner's socket (``owner.sock``: one session, one insert of the batch as one JSON parameter),
and reads keys, limits and budgets the same way every ~2 s. The web app (``--web-port``) runs here,
a cursor per request, on the port the parent holds across owners; the CLI and a standalone
``aispendtrack web`` use the owner's socket. The periodic jobs (alerts, purges, reconciliations)
and the fetch of the list prices run here, once, not in every worker.

Limits and blocking budgets are the host's: counted in shared memory under one lock
(addon/core/host_counters.py), seeded by the first owner from the stored calls before any worker
starts; a restarted owner leaves the counts as they are (the workers went on counting).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import socket
import sys
import threading
from decimal import Decimal
from pathlib import Path

import click

from addon.core import config, config_files, host_counters, periods, price_data, spill
from addon.core import home as home_dir
from addon.core.budgets import Budget
from addon.core.evaluate import Evaluator
from addon.core.limits import team_counts
from addon.core.store import StoreError, owner, writing
from addon.core.store import budgets as budget_rows
from addon.core.store import calls as call_rows
from addon.core.store import teams as team_rows
from pricing import PriceBook, PriceFileError


class HostOwner:
    """The owner of ``home``'s file for the workers' lifetime, and the jobs that run once per host."""

    def __init__(self, home: Path, addon_options: dict, seed: bool = True) -> None:
        db = home_dir.db_path(home)
        try:
            book = PriceBook(home / config_files.PRICES)
        except PriceFileError as exc:  # as a lone proxy: a bad override file stops the start, with its error
            raise click.ClickException(str(exc)) from None
        self.owner = owner.start(db)
        try:
            zone = self._seed_counters(home, addon_options["aispendtrack_quota_tz"], seed)
        except BaseException:
            owner.stop(self.owner)
            raise
        self.evaluator = Evaluator(db, home, zone, interval=max(1, addon_options["aispendtrack_alert_interval_s"]),
                                   purge_interval=addon_options["aispendtrack_purge_interval_s"], book=book,
                                   base_urls={"openai": addon_options["aispendtrack_openai_upstream"],
                                              "anthropic": addon_options["aispendtrack_anthropic_upstream"]})
        self.evaluator.start()
        # The host's one fetch of the list prices (its workers load what this stores).
        self.prices = price_data.start(db, addon_options["aispendtrack_prices_url"],
                                       addon_options["aispendtrack_prices_refresh_s"], book)

    @staticmethod
    def _seed_counters(home: Path, quota_tz: str, seed: bool):
        """The host's counts start from the calls stored this hour and month and those spilled and not
        yet stored (a restart grants no fresh quota, nor budget), in the quota zone (stored first when
        given, as a lone proxy does)."""
        now = dt.datetime.now(dt.UTC)
        path = host_counters.path(home)
        try:
            with writing(home_dir.db_path(home)) as con:
                zone = config.set_quota_zone(con, quota_tz) if quota_tz else config.quota_zone(con)
                if not seed and path.exists():
                    return zone
                hour, month = periods.hour_start(now), periods.month_start(now, zone)
                day = periods.day_start(now, zone)
                spilled = call_rows.not_stored(con, _spilled(home, min(hour, month, day)))
                counts = call_rows.counts_since(con, hour, month)
                for row in spilled:
                    if row["key_id"] is not None:
                        found = counts.get(row["key_id"], (0, 0))
                        counts[row["key_id"]] = (found[0] + (row["ts"] >= hour), found[1] + (row["ts"] >= month))
                teams = team_counts(counts, {key_id: team_id for key_id, team_id, *_ in team_rows.members(con)})
                spend = _budget_spend(con, spilled, day, month)
        except periods.UnknownZone as exc:
            raise click.ClickException(f"aispendtrack_quota_tz: {exc}") from None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        host_counters.create(path, counts, hour, month, teams, (spend, day, month))
        return zone

    def stop(self) -> None:
        """After the workers stopped: their last rows came in through the socket before they exited."""
        self.evaluator.stop()
        self.prices.stop()
        owner.stop(self.owner)


def _budget_spend(con, spilled: list[dict], day: dt.datetime,
                  month: dt.datetime) -> dict[int, tuple[Decimal, Decimal]]:
    """(spend today, this month) of each budget some ``spilled`` call counts in: stored and spilled.
    The workers seed the others from the store alone, as they load them."""
    team_of = team_rows.names_of_keys(con)
    spend = {}
    for budget in (Budget.from_row(b) for b in budget_rows.all_budgets(con)):
        covered = [row for row in spilled if row["cost"] and budget.covers(
            row["key_id"], row["customer_id"], row["feature"], team_of.get(row["key_id"]))]
        if covered:
            today, this_month = budget_rows.spend_since(con, budget.scope, budget.scope_value, budget.key_id,
                                                        day, month)
            spend[budget.id] = (today + sum(r["cost"] for r in covered if r["ts"] >= day),
                                this_month + sum(r["cost"] for r in covered if r["ts"] >= month))
    return spend


def _spilled(home: Path, since: dt.datetime) -> list[dict]:
    """The calls since ``since`` in spill files a killed run left (the workers store them once they
    start, after the counts are seeded): key, tags, time and cost of each. A file that cannot be
    read is left to the worker that replays it, which says why."""
    found = []
    for directory in home_dir.spill_dirs(home):
        for path in sorted(directory.glob("*.jsonl")):
            try:
                rows, _ = spill.read(path)
            except (OSError, ValueError):
                continue
            for row in rows:
                try:
                    ts = dt.datetime.fromisoformat(str(row["ts"]))
                    cost = Decimal(str(row["cost_usd"])) if row.get("cost_usd") is not None else None
                except (KeyError, TypeError, ValueError, ArithmeticError):
                    continue
                if ts >= since:
                    found.append({"id": str(row.get("id")), "key_id": row.get("key_id"), "ts": ts, "cost": cost,
                                  "customer_id": row.get("customer_id"), "feature": row.get("feature")})
    return found


def main() -> None:
    """The owner's process: reads its options from the parent on standard input, serves until SIGTERM
    or until the parent is gone (as a worker does: cli/workers.py)."""
    from .workers import _die_with_parent, _tell_ready
    config = json.loads(sys.stdin.readline())
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    _die_with_parent(config["parent"])
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    for name in ("addon", "aispendtrack", "pricing"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        host = HostOwner(Path(config["home"]), config["addon"], seed=config["seed"])
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StoreError as exc:  # the file held by another process (a CLI command run while no owner served)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    web = _serve_web(Path(config["home"]), config["web"]) if config["web"] else None
    _tell_ready(config["ready_fd"])
    # Timed: a signal taken by another thread of this process (the parent's death comes twice at
    # once, the kernel's signal and the end of standard input) runs its handler only once the main
    # thread next runs Python, which an untimed wait may never do.
    while not stopping.wait(0.5):
        pass
    if web is not None:
        web.shutdown()  # requests after this wait in the port's queue, which the parent holds
    host.stop()


def _serve_web(home: Path, options: dict):
    """``--web-port``: the web app and API in this process, a cursor of the open file per request, on
    the listening socket the parent bound (cli/workers.py WebHandover); /metrics relays the parent's."""
    from addon.core import metrics
    from addon.core.metrics_merge import Relayed
    from web.server import serve_in_thread
    metrics.install(Relayed(options["metrics_url"]))
    listening = socket.socket(fileno=options["fd"])
    return serve_in_thread(home, options["host"], options["port"], options["trusted_proxies"], listening)

