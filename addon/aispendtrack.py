"""The AiSpendTrack mitmproxy addon: meters every OpenAI and Anthropic call passing through.

Run it with plain mitmdump in reverse mode (one port serves both providers):

    mitmdump --mode reverse:https://api.openai.com --set connection_strategy=lazy \
        -s addon/aispendtrack.py --set aispendtrack_home=~/.aispendtrack

or with ``aispendtrack proxy``, which does the same in-process.

Calls need an ``x-aispendtrack-key`` header; ``x-customer-id`` and ``x-feature`` are optional
tags. All three are removed before the request goes upstream. The response is streamed back
untouched while a tap reads its usage; a writer thread stores one metadata row per call.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from urllib.parse import unquote

from mitmproxy import ctx, exceptions, http

from addon import failures, injection, refusals, routing, settings, upstreams
from addon.bounds import ConnectionBounds
from addon.core import config, periods
from addon.core import home as home_dir
from addon.core import keys as keygen
from addon.core.budgets import Budget, BudgetTracker
from addon.core.evaluate import Evaluator
from addon.core.keys import KeyRing
from addon.core.limits import Limiter
from addon.core.periods import hour_start, month_start
from addon.core.plans import limits_for
from addon.core.store import budgets as budget_rows
from addon.core.store import calls as call_rows
from addon.core.store import keys as key_rows
from addon.core.store import writing
from addon.estimate import Counter
from addon.guard import AuthGuard
from addon.meter import CallMeter
from addon.providers import Provider, all_providers
from addon.record import build_row
from addon.refusals import KEY_HEADER
from addon.writer import Writer
from pricing import PriceBook, PriceFileError
from pricing.overrides import FILE_NAME as PRICES_FILE

log = logging.getLogger(__name__)

TAG_HEADERS = ("x-customer-id", "x-feature")
HEALTH_PATH = "/aispendtrack/health"
MAX_TAG_LENGTH = 128
_META = "aispendtrack"
_OPTIONS = {s.option for s in settings.of("AiSpendTrack")}


class AiSpendTrack:
    def __init__(self) -> None:
        self.keyring = KeyRing()
        self.providers: list[Provider] = all_providers(None)  # replaced by counting ones in running()
        self.upstreams: dict[str, tuple[str, str, int, str] | None] = {}
        self.writer: Writer | None = None
        self.home = None
        self.book: PriceBook | None = None
        self.limiter = Limiter(zoneinfo.ZoneInfo("UTC"))  # replaced in running() with the configured zone
        self.budgets = BudgetTracker(zoneinfo.ZoneInfo("UTC"))
        self._seeded = False
        self._zone_warned: zoneinfo.ZoneInfo | None = None
        self.evaluator: Evaluator | None = None
        self.watch = failures.UpstreamWatch()
        self.guard = AuthGuard()
        self.tls_only = False
        self.inject_usage = True
        self._in_flight: dict[str, http.HTTPFlow] = {}  # calls with a meter, until response or error
        failures.install()

    def load(self, loader) -> None:
        settings.add_options(loader, "AiSpendTrack")

    def configure(self, updated: set[str]) -> None:
        if "ssl_insecure" in updated and ctx.options.ssl_insecure:
            raise exceptions.OptionsError("AiSpendTrack never turns off upstream TLS verification (ssl_insecure); "
                                          "trust a private CA with ssl_verify_upstream_trusted_ca instead.")
        if updated & {"aispendtrack_openai_upstream", "aispendtrack_anthropic_upstream", "aispendtrack_upstreams"}:
            self.upstreams = upstreams.parse(self.providers, ctx.options.aispendtrack_openai_upstream,
                                             ctx.options.aispendtrack_anthropic_upstream,
                                             ctx.options.aispendtrack_upstreams)
        settings.check(ctx.options, updated, "AiSpendTrack")
        if "aispendtrack_upstream_timeout_s" in updated:
            self.watch.timeout = ctx.options.aispendtrack_upstream_timeout_s
        if "aispendtrack_tls_only" in updated:
            self.tls_only = ctx.options.aispendtrack_tls_only
        if "aispendtrack_inject_usage" in updated:
            self.inject_usage = ctx.options.aispendtrack_inject_usage
        if "aispendtrack_auth_failures_per_minute" in updated:
            self.guard.allowed = ctx.options.aispendtrack_auth_failures_per_minute
        if "aispendtrack_quota_tz" in updated and ctx.options.aispendtrack_quota_tz:
            _zone(ctx.options.aispendtrack_quota_tz)  # validates; stored when the proxy starts
        if "aispendtrack_home" in updated:
            if self.writer is not None:
                raise exceptions.OptionsError("aispendtrack_home cannot change while the proxy runs; restart it.")
            self.home = home_dir.resolve(ctx.options.aispendtrack_home or None)
            try:  # a bad override file stops the start, with the file's own error message
                self.book = PriceBook(self.home / PRICES_FILE)
            except PriceFileError as exc:
                raise exceptions.OptionsError(str(exc)) from None

    def running(self) -> None:
        if self.writer is not None:
            return
        if self.home is None:  # options left at their defaults never triggered configure
            self.configure(set(_OPTIONS))
        self.providers = all_providers(Counter(self.home / home_dir.CACHE_DIR / "tiktoken"))
        zone = self._quota_zone()
        self.limiter, self.budgets = Limiter(zone), BudgetTracker(zone)
        self.writer = Writer(
            home_dir.db_path(self.home), self.home / home_dir.SPILL_DIR,
            build_row=self._row, on_refresh=self._refresh,
            flush_interval=ctx.options.aispendtrack_flush_ms / 1000, on_cycle=self.book.reload_if_changed)
        self.writer.load_keys_now()
        self.writer.start()
        self.evaluator = Evaluator(home_dir.db_path(self.home), self.home, zone,
                                   interval=max(1, ctx.options.aispendtrack_alert_interval_s),
                                   purge_interval=ctx.options.aispendtrack_purge_interval_s)
        self.evaluator.start()
        log.info("AiSpendTrack: data in %s, %d active keys", self.home, len(self.keyring))

    def _quota_zone(self) -> zoneinfo.ZoneInfo:
        """The stored quota time zone; a zone given as an option is stored first, so that the CLI
        and the web app count days and months as this proxy does."""
        with writing(home_dir.db_path(self.home)) as con:
            if ctx.options.aispendtrack_quota_tz:
                return config.set_quota_zone(con, ctx.options.aispendtrack_quota_tz)
            return config.quota_zone(con)

    def _row(self, item) -> dict:
        """On the writer thread: a finished call's row (or one already built), counted against budgets."""
        if isinstance(item, dict):
            return item  # built on completion because a blocking budget covers it
        row = build_row(item, self.book)
        self.budgets.record(row["key_id"], row["customer_id"], row["feature"], row["cost_usd"],
                            dt.datetime.now(dt.UTC))
        return row

    def _refresh(self, con) -> None:
        """On the writer thread, with its connection: keys, limits and budgets now; usage counts once."""
        now = dt.datetime.now(dt.UTC)
        self.budgets.load([Budget.from_row(b) for b in budget_rows.all_budgets(con)],
                          lambda b, day, month: budget_rows.spend_since(con, b.scope, b.scope_value, day, month), now)
        active = key_rows.active(con)
        self.keyring.replace({key_hash: key_id for key_hash, key_id, *_ in active})
        self.limiter.set_limits({key_id: limits_for(plan, per_hour, per_month)
                                 for _, key_id, plan, per_hour, per_month in active})
        stored = config.quota_zone(con)
        if stored != self.limiter.zone and stored != self._zone_warned:
            self._zone_warned = stored
            log.warning("quota_tz is now %s in the database; this proxy counts quotas and budgets in %s until "
                        "it is restarted", stored.key, self.limiter.zone.key)
        if not self._seeded:
            self.limiter.seed(call_rows.counts_since(con, hour_start(now), month_start(now, self.limiter.zone)), now)
            self._seeded = True

    def done(self) -> None:
        if self.evaluator is not None:
            self.evaluator.stop()
        if self.writer is not None:
            self._record_in_flight()
            self.writer.stop()
            self.writer = None

    def _record_in_flight(self) -> None:
        """Calls still open at shutdown get their row now: their response or error hook may come
        after the writer has stopped, or never. A streaming client may already have everything
        (SDKs stop reading at the last event, before the end of the HTTP body)."""
        for flow in list(self._in_flight.values()):
            meter: CallMeter | None = flow.metadata.pop(_META, None)
            if meter is not None:
                meter.finish(flow.response.status_code if flow.response else None, "proxy_stopped",
                             "the proxy stopped before the call ended")
                self._submit(meter)
        self._in_flight.clear()

    def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        path, _, query = req.path.partition("?")
        if path == HEALTH_PATH:
            flow.response = http.Response.make(200, b'{"status": "ok"}', {"content-type": "application/json"})
            return
        ours = _take_our_headers(req.headers)  # removed here: they never reach the provider
        routed = self._route(flow, path, query)
        if routed is None:
            return
        provider, provider_path, key_in_query = routed
        key_id = self.keyring.lookup(ours.get(KEY_HEADER))
        if key_id is None:
            self._refuse_key(flow, provider, KEY_HEADER in ours, key_in_query)
            return
        tags = {name: ours.get(name) for name in TAG_HEADERS}
        for name, value in tags.items():
            if value is not None and not _valid_tag(value):
                refusals.refuse(flow, provider, 400, "aispendtrack_invalid_tag",
                                f"The {name} header must be 1 to {MAX_TAG_LENGTH} printable characters "
                                f"(got {len(value)} characters). The call was not forwarded.")
                return
        now = dt.datetime.now(dt.UTC)
        over_budget = self.budgets.blocked(key_id, tags["x-customer-id"], tags["x-feature"], now)
        if over_budget is not None:
            refusals.budget_exceeded(flow, provider, over_budget, now)
            return
        refusal = self.limiter.admit(key_id, now)
        if refusal is not None:
            refusals.limit_reached(flow, provider, key_id, refusal)
            return
        if not upstreams.point(req, provider, self.upstreams):
            refusals.refuse(flow, provider, 502, "aispendtrack_no_upstream",
                            f"No upstream is configured for {provider.name}. Start the proxy with "
                            f"--upstream {provider.name}=https://... (see docs/providers.md).")
            return
        meter = CallMeter(provider, provider_path, key_id, tags["x-customer-id"], tags["x-feature"],
                          req.timestamp_start, req.raw_content, req.headers.get("content-encoding", ""))
        if self.inject_usage and provider.injects_usage(provider_path):
            self._inject_usage(req, meter)
        flow.metadata[_META] = meter
        self._in_flight[flow.id] = flow
        self.watch.start(flow)

    @staticmethod
    def _inject_usage(req: http.Request, meter: CallMeter) -> None:
        if req.headers.get("content-encoding", "identity") != "identity":
            return  # a compressed request body: left exactly as sent
        body = injection.with_usage_requested(req.raw_content)
        if body is None:
            return
        req.content = body
        # Uncompressed, so the rewritten stream can go to the client without decoding.
        req.headers["accept-encoding"] = "identity"
        meter.usage_injected = True

    def _route(self, flow: http.HTTPFlow, path: str, query: str) -> tuple[Provider, str, bool] | None:
        """(provider, its path, whether our key was in the query), with the request pointed at that
        path; None when the call was refused."""
        key_in_query = False
        if query and ("ask_" in query or "aispendtrack" in query.lower()):
            query, key_in_query = _drop_our_query(query)
        try:
            routed = routing.route(self.providers, path, flow.request.headers, query)
        except routing.Misrouted as exc:
            refusals.refuse(flow, exc.provider, exc.status, exc.code, exc.message)
            return None
        if self.tls_only and not flow.client_conn.tls_established:
            refusals.refuse(flow, routed.provider, 400, "aispendtrack_tls_required",
                            "This AiSpendTrack proxy only takes HTTPS: use https:// in your base_url.")
            return None
        if routed.path != path or key_in_query:
            # Forwarded as routed: canonical, without a prefix such as /gemini, and without our key.
            flow.request.path = routed.path + ("?" + query if query else "")
        return routed.provider, routed.path, key_in_query

    def _refuse_key(self, flow: http.HTTPFlow, provider: Provider, key_sent: bool, key_in_query: bool) -> None:
        # Only failures are throttled: a valid key is never refused because of a neighbour's.
        address = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        wait = self.guard.wait(address)
        if wait is not None:
            refusals.too_many_bad_keys(flow, provider, address, wait)
            return
        self.guard.failed(address)
        refusals.bad_key(flow, provider, key_sent, key_in_query)

    def server_connect(self, data) -> None:
        self.watch.connecting(data.server.id)

    def server_disconnected(self, data) -> None:
        self.watch.disconnected(data.server.id)

    def server_connect_error(self, data) -> None:
        self.watch.disconnected(data.server.id)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meter: CallMeter | None = flow.metadata.get(_META)
        if meter is None:
            return
        self.watch.answered(flow)
        res = flow.response
        if meter.start_response(res.status_code, res.headers.get("content-type", ""),
                                res.headers.get("content-encoding", "")):
            res.stream = meter.tap  # chunks go to the client as they arrive; the tap only reads along
            if meter.rewrites_body:  # without the usage we asked for: other bytes, sent decoded
                res.headers.pop("content-encoding", None)
                res.headers.pop("content-length", None)

    def response(self, flow: http.HTTPFlow) -> None:
        meter: CallMeter | None = flow.metadata.pop(_META, None)
        self._in_flight.pop(flow.id, None)
        if meter is not None:
            self.watch.finished(flow)
            meter.finish(flow.response.status_code, "completed", None, flow.response.raw_content)
            self._submit(meter)

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
        elif flow.response is not None or client_gone:  # the answer had started, or nobody is listening
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
        self._submit(meter)

    def _submit(self, meter: CallMeter) -> None:
        # Under a blocking budget the cost must count before the next call arrives, so the row is
        # built here (one parse and price, ~50 us) instead of on the writer thread a second later.
        if self.budgets.any_blocking(meter.key_id, meter.customer_id, meter.feature):
            meter = self._row(meter)
        self.writer.submit(meter)



_OUR_HEADERS = {name.encode(): name for name in (KEY_HEADER, *TAG_HEADERS)}


def _drop_our_query(query: str) -> tuple[str, bool]:
    """The query without our key, and whether it had one: a key pasted into a URL must never reach
    the provider (nor its logs). It is not accepted either: URLs end up in logs."""
    kept = [param for param in query.split("&") if not _is_our_param(param)]
    return "&".join(kept), len(kept) < query.count("&") + 1


def _is_our_param(param: str) -> bool:
    name, _, value = param.partition("=")
    return unquote(name).lower() == KEY_HEADER or unquote(value).startswith(keygen.PREFIX)


def _take_our_headers(headers: http.Headers) -> dict[str, str]:
    """Remove our headers and return their values (the first, if one was sent twice).

    One pass over the raw fields: Headers.get and .pop cost several microseconds each, and this
    runs on every request."""
    taken: dict[str, str] = {}
    kept = []
    for field in headers.fields:
        name = _OUR_HEADERS.get(field[0].lower())
        if name is None:
            kept.append(field)
        elif name not in taken:
            taken[name] = field[1].decode("utf-8", "surrogateescape")
    if taken:
        headers.fields = tuple(kept)
    return taken


def _valid_tag(value: str) -> bool:
    return 0 < len(value) <= MAX_TAG_LENGTH and value.isprintable()


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return periods.zone(name)
    except periods.UnknownZone as exc:
        raise exceptions.OptionsError(f"aispendtrack_quota_tz: {exc}") from None


addons = [ConnectionBounds(), AiSpendTrack()]
