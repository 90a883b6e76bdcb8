"""The parent of ``aispendtrack proxy --workers N`` in the embedded mode: the one owner of the data.

The workers (cli/workers.py) proxy; this process opens the DuckDB file once (store/owner.py) and
keeps it open while they run. A worker never opens the file: it sends its finished rows, in the
batches its writer flushes, over the owner's socket (``owner.sock``: one session, one insert of
the batch as one JSON parameter), and reads keys, limits and budgets the same way every ~2 s. The
web app (``--web-port``), the CLI and a standalone ``aispendtrack web`` use the same owner; the
periodic jobs (alerts, purges, reconciliations) run here, once, not in every worker.

Limits and blocking budgets are the host's: counted in shared memory under one lock
(addon/core/host_counters.py), seeded here from the stored calls before any worker starts.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from addon.core import config, config_files, host_counters, periods
from addon.core import home as home_dir
from addon.core.evaluate import Evaluator
from addon.core.store import calls as call_rows
from addon.core.store import owner, writing
from pricing import PriceBook, PriceFileError


class HostOwner:
    """The owner of ``home``'s file for the workers' lifetime, and the jobs that run once per host."""

    def __init__(self, home: Path, addon_options: dict) -> None:
        db = home_dir.db_path(home)
        try:
            book = PriceBook(home / config_files.PRICES)
        except PriceFileError as exc:  # as a lone proxy: a bad override file stops the start, with its error
            raise click.ClickException(str(exc)) from None
        self.owner = owner.start(db)
        try:
            zone = self._seed_counters(home, addon_options["aispendtrack_quota_tz"])
        except BaseException:
            owner.stop(self.owner)
            raise
        self.evaluator = Evaluator(db, home, zone, interval=max(1, addon_options["aispendtrack_alert_interval_s"]),
                                   purge_interval=addon_options["aispendtrack_purge_interval_s"], book=book,
                                   base_urls={"openai": addon_options["aispendtrack_openai_upstream"],
                                              "anthropic": addon_options["aispendtrack_anthropic_upstream"]})
        self.evaluator.start()

    @staticmethod
    def _seed_counters(home: Path, quota_tz: str):
        """The host's counts start from the calls stored this hour and month (a restart grants no fresh
        quota), in the quota zone (stored first when given, as a lone proxy does)."""
        now = dt.datetime.now(dt.UTC)
        try:
            with writing(home_dir.db_path(home)) as con:
                zone = config.set_quota_zone(con, quota_tz) if quota_tz else config.quota_zone(con)
                hour, month = periods.hour_start(now), periods.month_start(now, zone)
                counts = call_rows.counts_since(con, hour, month)
        except periods.UnknownZone as exc:
            raise click.ClickException(f"aispendtrack_quota_tz: {exc}") from None
        path = host_counters.path(home)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        host_counters.create(path, counts, hour, month)
        return zone

    def stop(self) -> None:
        """After the workers stopped: their last rows came in through the socket before they exited."""
        self.evaluator.stop()
        owner.stop(self.owner)
