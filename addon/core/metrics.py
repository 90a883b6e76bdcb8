"""The proxy's metrics in the Prometheus text format (docs/operations.md lists them).

Counted in the proxy's process as each call's row is built, so they agree with the rows: calls,
errors, tokens by kind and cost by provider, model and key (and customer and feature with
``--metrics-tags``); latency and time-to-first-token histograms; the time calls spent in our own
hooks; the writer's queue, spill files, rows written and dropped; refusals by reason. Served at
``/metrics`` on ``--metrics-port`` and on ``--web-port`` (the web app in the proxy's process).

Label values come from callers and upstreams (a model name, a customer id), so each label keeps at
most ``cap`` distinct values of at most MAX_LABEL_LENGTH characters; later or longer ones are
counted under ``other``. Combinations are bounded too: at most ``series_cap`` distinct label sets
(a call's provider, model, key, tags and status); a call with a new one past that is counted under
``other`` in every label. Prometheus keeps a series per combination for ever, and every scrape
writes them all: unbounded labels would grow both without end.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

OTHER = "other"
# The labels whose values a caller or an upstream chooses, each kept to --metrics-label-cap values
# (customer and feature only with --metrics-tags).
CAPPED_LABELS = ("provider", "model", "key", "customer", "feature")
MAX_LABEL_LENGTH = 200  # as long as a stored model name (addon/record.py); tags are shorter still
KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")
# Seconds: most calls take 0.3-30 s, streams' first tokens 0.1-3 s.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
# A write takes milliseconds on a quiet disk; seconds mean a slow disk, a big file or a busy catalog.
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# The time a call spends in our own hooks (the rows' proxy_us): tens of microseconds, a long stream's
# tap more; milliseconds mean a blocked event loop or a slow shared-mode count.
ADDED_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
REASONS = ("limit", "budget", "bad_key", "too_many_bad_keys", "other")

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "current", "install"]


class Capped:
    """At most ``cap`` distinct values; the rest become ``other``."""

    def __init__(self, cap: int) -> None:
        self.cap, self._seen, self._lock = cap, set[object](), threading.Lock()

    def values(self) -> list:
        with self._lock:
            return list(self._seen)

    def drop(self, which: Callable[[object], bool]) -> list:
        """Forget the values ``which`` picks (room for new ones); returns them."""
        with self._lock:
            gone = [value for value in self._seen if which(value)]
            self._seen.difference_update(gone)
        return gone

    def __call__(self, value: object) -> bool:
        """Whether ``value`` is one of the values kept (taking it if there is room)."""
        if value in self._seen:
            return True
        with self._lock:
            if len(self._seen) >= self.cap:
                return False
            self._seen.add(value)
        return True


def _label(value: object, capped: Capped) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_LABEL_LENGTH and capped(text) else OTHER


class Metrics:
    def __init__(self, tags: bool = False, cap: int = 100, series_cap: int = 1000) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ConnectionsCollector())
        self._labels = CAPPED_LABELS if tags else CAPPED_LABELS[:3]
        self._capped = {name: Capped(cap) for name in self._labels}
        self._combinations = Capped(series_cap)
        labels, r = self._labels, self.registry
        self.calls = Counter("aispendtrack_calls", "Calls recorded, by HTTP status.", (*labels, "status"), registry=r)
        self.errors = Counter("aispendtrack_errors", "Calls that ended in an error (status >= 400, none, or "
                              "cut after their status).", labels,
                              registry=r)
        self.tokens = Counter("aispendtrack_tokens", "Tokens by kind (input is uncached input).", (*labels, "kind"),
                              registry=r)
        self.cost = Counter("aispendtrack_cost_usd", "Cost in USD at list price.", labels, registry=r)
        # The calls whose cost nobody knows add nothing to the cost: without them a spend panel reads
        # a model without a price as free.
        self.unpriced = Counter("aispendtrack_unpriced_calls", "Calls whose cost is unknown (no price, no usage, "
                                "or usage not believed): in no cost total.", labels, registry=r)
        self.latency = Histogram("aispendtrack_latency_seconds", "From the request to the response's end.",
                                 ("provider", "model"), buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("aispendtrack_time_to_first_token_seconds", "From the request to the first token "
                              "of a stream.", ("provider", "model"), buckets=TTFT_BUCKETS, registry=r)
        self.added = Histogram("aispendtrack_added_seconds", "Time each call spent in the proxy's own hooks and "
                               "stream tap (the rows' proxy_us).", buckets=ADDED_BUCKETS, registry=r)
        self.refusals = Counter("aispendtrack_refusals", "Calls the proxy refused itself (429, 401, 400, ...), by "
                                "reason.",
                                ("reason",), registry=r)
        self.writes = Histogram("aispendtrack_writer_cycle_seconds", "How long one writer cycle that stored rows "
                                "took, from taking them off the queue to the commit.", buckets=WRITE_BUCKETS,
                                registry=r)
        for reason in REASONS:
            self.refusals.labels(reason)  # present at 0, so rate() works from the first refusal

    def observe(self, row: dict) -> None:
        """One call's row. Never raises: metrics must not cost a row."""
        try:
            self._observe(row)
        except Exception:  # a value no label takes: the row is stored all the same
            pass

    def _observe(self, row: dict) -> None:
        values = {"provider": row.get("provider"), "model": row.get("model") or "", "key": row.get("key_id"),
                  "customer": row.get("customer_id"), "feature": row.get("feature")}
        labels = [_label(values[name], self._capped[name]) for name in self._labels]
        status = row.get("status")
        status_label = str(status) if status is not None else "none"
        if not self._combinations((*labels, status_label)):
            labels, status_label = [OTHER] * len(labels), OTHER
        self.calls.labels(*labels, status_label).inc()
        if _failed(status, row.get("outcome")):
            self.errors.labels(*labels).inc()
        for kind in KINDS:
            count = int(row.get(f"{kind}_tokens") or 0)
            if count:
                self.tokens.labels(*labels, kind).inc(count)
        cost = row.get("cost_usd")
        if cost:
            self.cost.labels(*labels).inc(float(Decimal(cost)))
        if row.get("priced") is False:  # calls.UNPRICED
            self.unpriced.labels(*labels).inc()
        if row.get("latency_ms") is not None:
            self.latency.labels(labels[0], labels[1]).observe(float(row["latency_ms"]) / 1000)
        if row.get("ttft_ms") is not None:
            self.ttft.labels(labels[0], labels[1]).observe(float(row["ttft_ms"]) / 1000)
        if row.get("proxy_us") is not None:
            self.added.observe(row["proxy_us"] / 1_000_000)

    def label_values(self, label: str) -> list[str]:
        """The values ``label`` (customer, key, ...) has now, "other" aside."""
        return [str(v) for v in self._capped[label].values()] if label in self._capped else []

    def forget(self, label: str, value: str) -> None:
        """Drop every series whose ``label`` is ``value``: an erased customer or key is named no more."""
        if label not in self._labels:
            return
        at = self._labels.index(label)
        self._capped[label].drop(lambda v: v == value)
        for combination in self._combinations.drop(lambda c: isinstance(c, tuple) and c[at] == value):
            labels, status = combination[:-1], combination[-1]
            series = [(self.calls, (*labels, status)), (self.errors, labels), (self.cost, labels),
                      (self.unpriced, labels), *((self.tokens, (*labels, kind)) for kind in KINDS)]
            for metric, values in series:
                try:
                    metric.remove(*values)
                except KeyError:  # never counted (no error, no cost, no tokens of that kind)
                    pass

    def wrote(self, seconds: float) -> None:
        self.writes.observe(seconds)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def watch_writer(self, stats: Callable[[], dict[str, int]]) -> None:
        """The writer's figures, read at each scrape: queue, spill files, rows written and dropped."""
        self.registry.register(_WriterCollector(stats))

    def watch_prices(self, status: Callable[[], dict]) -> None:
        """The list-price data in use (price_data.as_status), read at each scrape."""
        self.registry.register(_PricesCollector(status))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _WriterCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator:
        s = self.stats()
        yield GaugeMetricFamily("aispendtrack_writer_queue", "Rows waiting to be written.", value=s["queue"])
        yield GaugeMetricFamily("aispendtrack_spill_files", "Spill files waiting to be replayed into the database.",
                                value=s["spill_files"])
        yield CounterMetricFamily("aispendtrack_rows_written", "Rows written to the database.", value=s["written"])
        yield CounterMetricFamily("aispendtrack_rows_dropped", "Rows dropped (memory cap while neither the database "
                                  "nor the spill directory could be written).", value=s["dropped"])


class _ConnectionsCollector(Collector):
    def collect(self) -> Iterator:
        if _connections is None:
            return
        s = _connections()
        family = GaugeMetricFamily("aispendtrack_client_connections", "Client connections open: served, or over "
                                   "the cap and waiting for their 503.", labels=["state"])
        family.add_metric(["served"], s["served"])
        family.add_metric(["refused"], s["refused"])
        yield family
        yield GaugeMetricFamily("aispendtrack_client_connections_max", "The most client connections served at once "
                                "(--max-connections, or what the file descriptor limit allows).", value=s["max"])


class _PricesCollector(Collector):
    def __init__(self, status: Callable[[], dict]) -> None:
        self.status = status

    def collect(self) -> Iterator:
        s = self.status()
        age = s["age_seconds"]
        yield GaugeMetricFamily("aispendtrack_price_data_age_seconds", "Seconds since the list prices in use were "
                                "last fetched (+Inf: never, the installed package's data).",
                                value=math.inf if age is None else age)
        info = GaugeMetricFamily("aispendtrack_price_data", "The list prices in use (1): their snapshot id and "
                                 "source.", labels=["snapshot", "source"])
        info.add_metric([s["snapshot"], s["source"]], 1)
        yield info


_connections: Callable[[], dict[str, int]] | None = None  # set before the proxy's metrics are made
_current = Metrics()


def install(metrics: Metrics) -> Metrics:
    """This process's metrics (the proxy sets them up at start, with its settings)."""
    global _current
    _current = metrics
    return metrics


def watch_connections(stats: Callable[[], dict[str, int]]) -> None:
    """The client connections open now (served, refused, max), read at each scrape of any registry:
    how close the proxy is to its cap. ConnectionBounds is loaded before the metrics are set up."""
    global _connections
    _connections = stats


def current() -> Metrics:
    return _current


def _failed(status: int | None, outcome: str | None) -> bool:
    """As reports count errors (rollups.FAILED, in SQL): an error status, or an answer that did not
    complete (a stream cut after its 200, the client gone); no status alone is not one."""
    return (status is not None and status >= 400) or (outcome is not None and outcome != "completed")
