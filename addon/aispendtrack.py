"""The AiSpendTrack proxy: mitmproxy addons that meter every LLM call passing through.

Run it with plain mitmdump in reverse mode (one port serves every provider):

    mitmdump --mode reverse:https://api.openai.com --set connection_strategy=lazy \
        -s addon/aispendtrack.py --set aispendtrack_home=~/.aispendtrack

or with ``aispendtrack proxy``, which does the same in-process. The addons, in the order mitmproxy
runs their hooks (docs/architecture.md):

- ``Forward`` (forward.py): the forward-proxy port's credential, and which hosts it intercepts;
- ``ConnectionBounds`` (bounds.py): how many clients, how long, how large a request head;
- ``Gate`` (gate.py): health check, our headers removed, routing, keys, tags, upstreams;
- ``Quotas`` (quotas.py): rate limits, monthly quotas and blocking budgets;
- ``AiSpendTrack`` (here): meters the admitted call (usage injection, the stream tap, upstream
  failures) and stores one metadata row per call through the writer thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import zoneinfo
from pathlib import Path
from time import perf_counter_ns

from mitmproxy import ctx, exceptions, http

from addon import batches, failures, injection, metrics_port, overhead, realtime, refusals, settings
from addon.bounds import ConnectionBounds
from addon.core import config, config_files, gdpr, host_counters, metrics, price_data, spool
from addon.core import home as home_dir
from addon.core.budgets import Budget
from addon.core.evaluate import Evaluator
from addon.core.limits import team_counts, teams_of_keys
from addon.core.periods import hour_start, month_start
from addon.core.plans import limits_for
from addon.core.store import budgets as budget_rows
from addon.core.store import calls as call_rows
from addon.core.store import connection, owner, remote, shared
from addon.core.store import keys as key_rows
from addon.core.store import teams as team_rows
from addon.estimate import Counter
from addon.forward import Forward
from addon.gate import Gate
from addon.meter import CallMeter
from addon.providers import all_providers
from addon.quotas import Quotas
from addon.record import build_row
from addon.shared_counters import SharedCounters
from addon.state import ADMITTED, Admission, ProxyState
from addon.writer import Writer
from pricing import PriceBook, PriceFileError

log = logging.getLogger(__name__)

_META = "aispendtrack"  # flow.metadata key of a call's CallMeter
_READ_ON_THE_LOOP = 256 * 1024  # request bodies larger than this are read for usage injection off the loop


_STOPPED = "the proxy stopped before the call ended"


class AiSpendTrack:
    def __init__(self, state: ProxyState | None = None) -> None:
        self.state = state or ProxyState()
        self.writer: Writer | None = None
        self.book: PriceBook | None = None
        self._shared_prices: config_files.SharedPrices | None = None  # the shared mode's book, kept current
        self._seeded = False
        self._zone_warned: zoneinfo.ZoneInfo | None = None
        self.evaluator: Evaluator | None = None
        self.watch = failures.UpstreamWatch()
        self.inject_usage = True
        self._in_flight: dict[str, http.HTTPFlow] = {}  # calls with a meter, until response or error
        self._home_lock: int | None = None
        self._owner: owner.Owner | None = None
        self._host_counters: host_counters.HostCounters | None = None
        self.metrics = metrics.current()
        self._metrics_server = None
        self._erasures: gdpr.ErasureWatch | None = None
        self._prices: price_data.PriceRefresher | None = None
        failures.install()

    def load(self, loader) -> None:
        settings.add_options(loader, "AiSpendTrack")

    def configure(self, updated: set[str]) -> None:
        settings.check(ctx.options, updated, "AiSpendTrack")
        if "aispendtrack_upstream_timeout_s" in updated:
            self.watch.timeout = ctx.options.aispendtrack_upstream_timeout_s
        if "aispendtrack_inject_usage" in updated:
            self.inject_usage = ctx.options.aispendtrack_inject_usage
        if "aispendtrack_home" in updated:
            if self.writer is not None:
                raise exceptions.OptionsError("aispendtrack_home cannot change while the proxy runs; restart it.")
            self.state.home = None
            if ctx.options.aispendtrack_worker_dir:  # the parent holds the directory, its owner child the file
                connection.only_through_owner(home_dir.db_path(self.state.data_home()))
                remote.bound_answers()
            else:
                self._claim_home()
            self._load_prices()

    def _load_prices(self) -> None:
        """The data directory's prices.toml; in the shared mode the deployment's, read from the store
        with the keys (before the first call is served, then on every refresh)."""
        home = self.state.data_home()
        if shared.configured() is not None:
            self._shared_prices = config_files.SharedPrices(home)
            self.book = self._shared_prices.book
            return
        try:  # a bad override file stops the start, with the file's own error message
            self.book = PriceBook(home / config_files.PRICES)
        except PriceFileError as exc:
            raise exceptions.OptionsError(str(exc)) from None

    def _claim_home(self) -> None:
        """One proxy per data directory (home.claim); the lock is held until done() or exit."""
        self._release_home()
        listening = f"{ctx.options.listen_host or '0.0.0.0'}:{ctx.options.listen_port or 8080}"
        try:
            self._home_lock = home_dir.claim(self.state.data_home(), listening)
        except home_dir.HomeInUse as exc:
            raise exceptions.OptionsError(str(exc)) from None

    def _release_home(self) -> None:
        if self._home_lock is not None:
            os.close(self._home_lock)
            self._home_lock = None

    def running(self) -> None:
        if self.writer is not None:
            return
        if self.book is None:  # options left at their defaults never triggered configure
            self.configure({"aispendtrack_home"})
        assert self.book is not None
        home = self.state.data_home()
        worker_dir = ctx.options.aispendtrack_worker_dir
        if not worker_dir:  # the owner of a worker's directory may have exports in flight there
            spool.remove_leftovers(home)
        counter = Counter(home / home_dir.CACHE_DIR / "tiktoken")
        counter.load_in_background()
        self.state.providers[:] = all_providers(counter)
        cfg = shared.configured()
        if cfg is not None:
            self.state.counters = SharedCounters(cfg, self.state)
            self.state.budgets.shared = True
        for path in config_files.not_read(home):
            log.warning("%s is not read in the shared mode: every replica uses the deployment's copy in the "
                        "shared store. Put it there with `aispendtrack %s import %s` (once), then remove it.",
                        path, path.stem, path)
        if cfg is None and worker_dir:  # a worker of `proxy --workers N`: the host's counts, the owner's file
            self._host_counters = host_counters.HostCounters(host_counters.path(home))
            self.state.limiter.host = self.state.budgets.host = self._host_counters
        elif cfg is None:  # embedded: this process keeps the file open until done() (store/owner.py)
            self._owner = owner.start(home_dir.db_path(home))
        spill_dir = (Path(worker_dir) if worker_dir else home) / home_dir.SPILL_DIR
        if not worker_dir and (moved := home_dir.gather_spills(home, spill_dir)):  # workers' parent gathers theirs
            log.info("%d spill files of earlier workers (proxy --workers N) moved to %s: stored now", moved, spill_dir)
        self.writer = Writer(
            home_dir.db_path(home), spill_dir, build_row=self._row, on_refresh=self._refresh,
            flush_interval=ctx.options.aispendtrack_flush_ms / 1000, on_cycle=self.book.reload_if_changed,
            sync=self.state.counters.sync_budgets if self.state.counters else None,
            settle=lambda con, rows: batches.settle(con, rows, self._count),
            on_written=lambda seconds: metrics.current().wrote(seconds))
        self.metrics = metrics.install(metrics.Metrics(ctx.options.aispendtrack_metrics_tags,
                                                       ctx.options.aispendtrack_metrics_label_cap,
                                                       ctx.options.aispendtrack_metrics_series_cap))
        self.metrics.watch_writer(self.writer.stats)
        self._erasures = gdpr.ErasureWatch(home, self.metrics)
        if ctx.options.aispendtrack_metrics_port:
            try:
                self._metrics_server = metrics_port.serve(ctx.options.aispendtrack_metrics_host,
                                                          ctx.options.aispendtrack_metrics_port)
            except OSError as exc:  # metrics are worth a log line, not the calls
                log.warning("cannot serve metrics on port %d (%s); calls are proxied and recorded all the same",
                          ctx.options.aispendtrack_metrics_port, exc.strerror or exc)
        self.writer.load_keys_now()
        # The embedded mode's workers price with what their owner fetched and stored (cli/embedded.py):
        # one fetch per host, one version on every worker.
        url = price_data.OFF if cfg is None and worker_dir else ctx.options.aispendtrack_prices_url
        self._prices = price_data.start(home_dir.db_path(home), url, ctx.options.aispendtrack_prices_refresh_s,
                                        self.book)
        self.writer.start()
        if not worker_dir:  # the periodic jobs of workers run once, in their owner (cli/embedded.py)
            self.evaluator = Evaluator(home_dir.db_path(home), home, self.state.limiter.zone,
                                       interval=max(1, ctx.options.aispendtrack_alert_interval_s),
                                       purge_interval=ctx.options.aispendtrack_purge_interval_s, book=self.book,
                                       base_urls=_usage_api_bases())
            self.evaluator.start()
        log.info("AiSpendTrack: data in %s, %d active keys%s", home, len(self.state.keyring),
                 f", shared storage at {cfg.where}" if cfg else "")

    def _row(self, item) -> dict | list[dict]:
        """On the writer thread: a finished call's row (or one already built), counted against budgets.
        A batch call can add rows of the batch's usage: those count once settled (batches.settle)."""
        if isinstance(item, dict):
            return item  # built on completion because a blocking budget covers it
        assert self.book is not None
        row = build_row(item, self.book)
        self._count(row)
        return batches.rows(item, row, self.book) if item.batch is not None else row

    def _count(self, row: dict) -> None:
        self.metrics.observe(row)
        self.state.budgets.record(row["key_id"], row["customer_id"], row["feature"], row["cost_usd"],
                                  dt.datetime.now(dt.UTC), row["ts"])

    def _refresh(self, con) -> None:
        """On the writer thread, with its connection: keys, limits and budgets now; usage counts once."""
        now = dt.datetime.now(dt.UTC)
        state = self.state
        with connection.snapshot(con):  # a team renamed or a key moved meanwhile shows on all of them, or none
            budgets, teams = budget_rows.all_budgets(con), team_rows.names_of_keys(con)
            active, members = key_rows.active(con), team_rows.members(con)
        state.budgets.load([Budget.from_row(b) for b in budgets],
                           lambda b, day, month: budget_rows.spend_since(con, b.scope, b.scope_value, b.key_id,
                                                                         day, month), now, teams,
                           lambda keys, day, month: budget_rows.keys_spend_since(con, keys, day, month))
        state.keyring.replace({key_hash: key_id for key_hash, key_id, *_ in active})
        state.limiter.set_limits({key_id: limits_for(plan, per_hour, per_month)
                                  for _, key_id, plan, per_hour, per_month in active}, teams_of_keys(members))
        stored = config.quota_zone(con)
        if stored != state.limiter.zone and stored != self._zone_warned:
            self._zone_warned = stored
            log.warning("quota_tz is now %s in the database; this proxy counts quotas and budgets in %s until "
                        "it is restarted", stored.key, state.limiter.zone.key)
        if self._erasures is not None:
            self._erasures.check(con)
        if state.counters is not None:
            state.counters.seed(con, now)
        if self._shared_prices is not None:
            self._shared_prices.refresh(con)
        if not self._seeded:
            zone = state.limiter.zone
            counts = call_rows.counts_since(con, hour_start(now), month_start(now, zone))
            state.limiter.seed(counts, now, team_counts(counts, {key_id: team_id for key_id, team_id, *_ in members}))
            self._seeded = True

    def done(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self.evaluator is not None:
            self.evaluator.stop()
        if self._prices is not None:
            self._prices.stop()
        if self.writer is not None:
            self._record_in_flight()
            self.writer.stop()
            self.writer = None
        if self._owner is not None:
            owner.stop(self._owner)
            self._owner = None
        if self.state.counters is not None:
            self.state.counters.close()
        if self._host_counters is not None:
            self.state.limiter.host = self.state.budgets.host = None
            self._host_counters.close()
            self._host_counters = None
        self._release_home()

    def calls_in_flight(self) -> int:
        """Calls forwarded and not yet answered whole (cli/proxy.py waits for them on a stop)."""
        return len(self._in_flight)

    def _record_in_flight(self) -> None:
        """Calls still open at shutdown get their row now: their response or error hook may come
        after the writer has stopped, or never. A streaming client may already have everything
        (SDKs stop reading at the last event, before the end of the HTTP body)."""
        for flow in list(self._in_flight.values()):
            meter: CallMeter | None = flow.metadata.pop(_META, None)
            if meter is not None:
                meter.finish(flow.response.status_code if flow.response else None, "proxy_stopped", _STOPPED)
                meter.hooks_ns = overhead.take(flow)
                self.submit(meter)
        self._in_flight.clear()

    async def request(self, flow: http.HTTPFlow) -> None:
        admitted: Admission | None = flow.metadata.pop(ADMITTED, None)
        if admitted is None or flow.response is not None:
            return
        req = flow.request
        meter = CallMeter(admitted.provider, admitted.path, admitted.key_id, admitted.customer_id, admitted.feature,
                          req.timestamp_start, req.raw_content, req.headers.get("content-encoding", ""),
                          req.method, req.headers.get("content-type", ""),
                          batch=admitted.provider.batch_call(req.method, admitted.path),
                          upgrade=bool(req.headers.get("upgrade")))
        meter.guarded = admitted.provider.guardrail_in_headers(req.headers)
        if self.inject_usage and admitted.provider.injects_usage(admitted.path, req.path.partition("?")[2]):
            await self._inject_usage(req, meter)
        flow.metadata[_META] = meter
        self._in_flight[flow.id] = flow
        self.watch.start(flow)

    @staticmethod
    async def _inject_usage(req: http.Request, meter: CallMeter) -> None:
        encoding = req.headers.get("content-encoding", "identity")
        if encoding != "identity":  # left exactly as sent
            meter.usage_not_requested = f"the request body is compressed ({encoding[:20]})"
            return
        body = req.raw_content
        if body is not None and len(body) > _READ_ON_THE_LOOP:
            # A large body is read on a worker thread, so the other calls' chunks keep flowing.
            asked = await asyncio.to_thread(injection.with_usage_requested, body)
        else:
            asked = injection.with_usage_requested(body)
        meter.usage_not_requested = asked.reason
        if asked.body is None:
            return
        req.content = asked.body
        # Uncompressed, so the rewritten stream can go to the client without decoding.
        req.headers["accept-encoding"] = "identity"
        meter.usage_injected = True

    def server_connect(self, data) -> None:
        self.watch.connecting(data.server.id)

    def server_disconnected(self, data) -> None:
        self.watch.disconnected(data.server.id)

    def server_connect_error(self, data) -> None:
        self.watch.disconnected(data.server.id)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meter: CallMeter | None = flow.metadata.get(_META)
        res = flow.response
        if meter is None or res is None:
            return
        self.watch.answered(flow)
        meter.response_headers = res.headers
        if meter.start_response(res.status_code, res.headers.get("content-type", ""),
                                res.headers.get("content-encoding", "")):
            res.stream = meter.tap  # chunks go to the client as they arrive; the tap only reads along
            if meter.rewrites_body:  # without the usage we asked for: other bytes, sent decoded
                res.headers.pop("content-encoding", None)
                res.headers.pop("content-length", None)

    def response(self, flow: http.HTTPFlow) -> None:
        meter: CallMeter | None = flow.metadata.pop(_META, None)
        self._in_flight.pop(flow.id, None)
        if meter is not None and flow.response is not None:
            self.watch.finished(flow)
            if flow.websocket is not None and realtime.is_session(meter):  # a row per response, not for this
                flow.metadata[realtime.SESSION] = realtime.RealtimeSession(meter, flow.request.path.partition("?")[2])
                return
            if meter.batch is not None and meter.batch.action != "results":
                batches.point_results_here(flow.response, meter.provider)
            meter.finish(flow.response.status_code, "completed", None, flow.response.raw_content)
            meter.hooks_ns = overhead.take(flow)
            self.submit(meter)

    def error(self, flow: http.HTTPFlow) -> None:
        meter: CallMeter | None = flow.metadata.pop(_META, None)
        self._in_flight.pop(flow.id, None)
        if meter is None:
            return
        timed_out = self.watch.finished(flow)
        message = flow.error.msg if flow.error else "unknown error"
        client_gone = "client disconnected" in message.lower()
        if flow.response is not None and meter.saw_the_end():
            # The terminal event had passed: the client had everything. Providers often keep the
            # connection a moment longer, and SDKs close theirs at [DONE]; that is no error.
            meter.finish(flow.response.status_code, "completed", None)
        elif self.state.cutting:
            meter.finish(flow.response.status_code if flow.response else None, "proxy_stopped", _STOPPED,
                         flow.response.raw_content if flow.response else None)
        elif client_gone or (flow.response is not None and flow.response.stream):
            # The answer had started to reach the client, or nobody is listening.
            status = flow.response.status_code if flow.response else None
            outcome = "client_disconnected" if client_gone else "upstream_failed"
            # Only the part before the first ": " — the rest can quote bytes of the response.
            meter.finish(status, outcome, message.split(": ", 1)[0][:200],
                         flow.response.raw_content if flow.response else None)
        else:
            status, outcome, text = refusals.upstream_failure(flow, meter.provider, message, timed_out,
                                                              self.watch.timeout)
            failures.reply_with(status, meter.provider.error_body(status, text, outcome))
            meter.finish(status, outcome, text[:200], None)
        meter.hooks_ns = overhead.take(flow)
        self.submit(meter)

    def submit(self, meter: CallMeter) -> None:
        if self.writer is None:
            log.error("call %s finished after the proxy stopped recording; it is not stored", meter.id)
            return
        # Under a blocking budget the cost must count before the next call arrives, so the row is
        # built here (one parse and price, ~50 us) instead of on the writer thread a second later.
        # A batch's usage counts against its creator's budgets once settled, on the writer thread.
        if meter.batch is None and self.state.budgets.any_blocking(meter.key_id, meter.customer_id, meter.feature):
            assert self.book is not None
            started = perf_counter_ns()
            row = build_row(meter, self.book)
            # Building it here is part of what the call waited for: ours, and the call's latency.
            took_us = (perf_counter_ns() - started + 500) // 1000
            if row["proxy_us"] is not None:
                row["proxy_us"] += took_us
            if row["latency_ms"] is not None:
                row["latency_ms"] = round(row["latency_ms"] + took_us / 1000, 3)
            self._count(row)
            self.writer.submit(row)
        else:
            self.writer.submit(meter)


def _usage_api_bases() -> dict[str, str]:
    """The providers' API base URLs as this proxy forwards to them: their usage APIs live there too
    (so an egress proxy, or a test's fake provider, stands in for both)."""
    reverse = next((m.split(":", 1)[1] for m in ctx.options.mode if m.startswith("reverse:")), "")
    target, _, listen = reverse.rpartition("@")  # "reverse:URL@8081" also names the listening port
    reverse = target if target and listen.isdigit() else reverse
    return {"openai": ctx.options.aispendtrack_openai_upstream or reverse,
            "anthropic": ctx.options.aispendtrack_anthropic_upstream}


def make_addons() -> list:
    """The proxy's addons in hook order, sharing one state."""
    state = ProxyState()
    meter = AiSpendTrack(state)
    # RealtimeSessions before AiSpendTrack: at shutdown its done() stores open responses before the writer stops.
    # Forward first: its TLS hook decides which tunnels are opened, and ConnectionBounds reads that.
    # Every flow hook timed: each row says what the proxy added to its call (addon/overhead.py).
    return overhead.instrument([Forward(state), ConnectionBounds(), Gate(state), Quotas(state),
                                realtime.RealtimeSessions(meter.submit, state), meter])


addons = make_addons()
