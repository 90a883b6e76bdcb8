"""The metrics of ``aispendtrack proxy --workers N``: the workers' expositions merged into one.

Each worker counts its own calls (addon/core/metrics.py) and serves them on a private port on
127.0.0.1; the parent reads them all and serves the merge on ``--metrics-port`` and the web port.
prometheus-client's multiprocess mode was the other way: it cannot take the proxy's own collectors
(connections, writer queue, price data: read from the live process at each scrape) nor drop an
erased customer's series, so the workers keep their registries and the parent merges their text.

- Counters and histograms are summed over the workers (``*_created``: the earliest), so
  ``aispendtrack_calls_total`` is the host's count. A worker that is replaced keeps counting: its
  last figures read are added to every later merge, so a sum never goes down (Prometheus would
  take a drop for a reset and count the whole new value again); series labelled by customer or
  feature excepted (an erased customer must not stay named in the parent).
- Every label keeps at most ``--metrics-label-cap`` values over the whole host, as in one process:
  each worker caps its own, so N workers (and the replaced ones) would show N times as many. The
  parent keeps the first values it serves, for its lifetime, and sums the others under ``other``.
- Gauges are not summed: each keeps its worker's value with a ``worker`` label (its slot), since
  a sum of, say, ``aispendtrack_client_connections_max`` would claim a capacity no one connection
  can have (the kernel gives a connection to one worker, which caps it alone).
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .metrics import CAPPED_LABELS, OTHER, Capped, Metrics

SCRAPE_TIMEOUT_S = 2.0
_SUMMED = ("counter", "histogram", "summary")

Key = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and sorted labels
Family = tuple[str, str]  # a metric family's type and help


def parse(text: str) -> tuple[dict[str, Family], dict[str, dict[Key, float]]]:
    """One worker's exposition: its families (type, help) and each family's samples."""
    families: dict[str, Family] = {}
    samples: dict[str, dict[Key, float]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, family.documentation)
        values = samples.setdefault(family.name, {})
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def _add(into: dict[str, dict[Key, float]], samples: dict[str, dict[Key, float]]) -> None:
    for name, values in samples.items():
        into_values = into.setdefault(name, {})
        for key, value in values.items():
            if key not in into_values:
                into_values[key] = value
            elif key[0].endswith("_created"):
                into_values[key] = min(into_values[key], value)
            else:
                into_values[key] += value


def _summed(name: str, families: dict[str, Family]) -> bool:
    """A counter's or histogram's; ``*_created`` too (the text format makes it a gauge of its own),
    merged as the earliest."""
    return families[name][0] in _SUMMED or name.endswith("_created")


def _tagged(key: Key) -> bool:
    """A series naming a customer or feature (--metrics-tags) is not kept past its worker: an erased
    subject's series is dropped by the live workers (Metrics.forget), and the parent keeps none."""
    return any(label in ("customer", "feature") for label, _ in key[1])


class Merged(Metrics):
    """The parent's metrics: ``exposition()`` reads every worker now and merges (see above)."""

    def __init__(self, workers: Callable[[], dict[int, str]], cap: int) -> None:
        super().__init__()
        self._kept = {label: Capped(cap) for label in CAPPED_LABELS}
        self._folded: dict[tuple[str, Key], tuple[Key, float]] = {}  # series served under other: (as other, value)
        self._folded_gone: dict[str, dict[Key, float]] = {}  # the last values of those no worker serves now
        self.workers = workers  # slot -> the /metrics URL of the worker serving in it now
        self.restarts = 0
        self.owner_restarts = 0  # embedded: the data's owner died and was replaced
        self._lock = threading.Lock()
        self._last: dict[int, tuple[str, dict[str, dict[Key, float]]]] = {}  # slot -> (url, summed samples)
        self._retired: dict[str, dict[Key, float]] = {}  # the summed samples of replaced workers
        self._families: dict[str, Family] = {}

    def exposition(self) -> bytes:
        gauges = self.read()
        registry = CollectorRegistry()
        registry.register(_Families(self._families, self._merged_sums(), gauges, self._own()))
        return generate_latest(registry)

    def read(self) -> dict[str, dict[Key, float]]:
        """Reads every worker (the parent also calls this every few seconds, so that a worker killed
        between scrapes still leaves its counts); returns the gauges, labelled by worker."""
        gauges: dict[str, dict[Key, float]] = {}
        for slot, url in self.workers().items():
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as answer:
                    families, samples = parse(answer.read().decode())
            except (OSError, ValueError):  # starting, stopping or dead: its last figures stand
                continue
            with self._lock:
                self._families.update(families)
                self._keep(slot, url, {n: v for n, v in samples.items() if _summed(n, families)})
            for name, values in samples.items():
                if not _summed(name, families):
                    labelled = gauges.setdefault(name, {})
                    for (sample, labels), value in values.items():
                        labelled[(sample, tuple(sorted((*labels, ("worker", str(slot))))))] = value
        return gauges

    def _keep(self, slot: int, url: str, sums: dict[str, dict[Key, float]]) -> None:
        previous = self._last.get(slot)
        if previous is not None and previous[0] != url:  # a new worker in the slot: the old one's counts stay
            _add(self._retired, {name: {key: value for key, value in values.items() if not _tagged(key)}
                                 for name, values in previous[1].items()})
        self._last[slot] = (url, sums)

    def _merged_sums(self) -> dict[str, dict[Key, float]]:
        with self._lock:
            merged: dict[str, dict[Key, float]] = {}
            _add(merged, self._retired)
            for _, sums in self._last.values():
                _add(merged, sums)
            return self._cap(merged)

    def _cap(self, sums: dict[str, dict[Key, float]]) -> dict[str, dict[Key, float]]:
        """``sums`` with each capped label's values past its cap as ``other``, their samples summed. A
        series under ``other`` that no worker serves any more (a subject a worker forgot) keeps its
        last value there: ``other`` never goes down, which Prometheus would read as a reset. Not one
        that names a customer or feature (as a replaced worker's, _keep): an erased one would stay."""
        out: dict[str, dict[Key, float]] = {}
        folded: dict[tuple[str, Key], tuple[Key, float]] = {}
        for name, values in sums.items():
            _add(out, {name: {}})
            for (sample, labels), value in values.items():
                relabelled = tuple((label, v if label not in self._kept or v == OTHER or self._kept[label](v)
                                    else OTHER) for label, v in labels)
                if relabelled != labels:
                    folded[(name, (sample, labels))] = ((sample, relabelled), value)
                _add(out, {name: {(sample, relabelled): value}})
        for (name, source), (target, value) in self._folded.items():
            if (name, source) not in folded and not _tagged(target):
                _add(self._folded_gone, {name: {target: value}})
        self._folded = folded
        _add(out, self._folded_gone)
        return out

    def _own(self) -> list[Metric]:
        alive = Metric("aispendtrack_workers", "Worker processes serving now (--workers).", "gauge")
        alive.add_sample("aispendtrack_workers", {}, len(self.workers()))
        restarts = Metric("aispendtrack_worker_restarts", "Workers that died and were replaced.", "counter")
        restarts.add_sample("aispendtrack_worker_restarts_total", {}, self.restarts)
        owner = Metric("aispendtrack_owner_restarts", "Owners of the embedded data that died and were replaced.",
                       "counter")
        owner.add_sample("aispendtrack_owner_restarts_total", {}, self.owner_restarts)
        return [alive, restarts, owner]


class _Families(Collector):
    def __init__(self, families: dict[str, Family], sums: dict[str, dict[Key, float]],
                 gauges: dict[str, dict[Key, float]], own: list[Metric]) -> None:
        self.families, self.sums, self.gauges, self.own = families, sums, gauges, own

    def collect(self) -> Iterator[Metric]:
        for name, (kind, help_text) in sorted(self.families.items()):
            metric = Metric(name, help_text, kind)
            for (sample, labels), value in sorted({**self.sums.get(name, {}), **self.gauges.get(name, {})}.items()):
                metric.add_sample(sample, dict(labels), value)
            if metric.samples:
                yield metric
        yield from self.own


class Relayed(Metrics):
    """The web app's metrics in the owner of the embedded data (cli/embedded.py): the parent's merge,
    read from its private port on each scrape (the parent alone knows which workers serve now)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def exposition(self) -> bytes:
        with urllib.request.urlopen(self.url, timeout=2 * SCRAPE_TIMEOUT_S) as answer:  # it reads each worker
            return answer.read()
