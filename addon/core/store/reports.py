"""SQL for reports, pages of calls, exports and repricing. Input is a validated spec (addon/core/reports.py)."""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from decimal import Decimal

import duckdb

from ..reports import ReportSpec, Selection
from . import batch, customer_order, raw_horizon, rollups
from . import keys as key_rows
from .calls import COLUMN_NAMES, COST_TYPE, REPRICE_COLUMNS, TOOL_NAMES, UNIT_NAMES, UNPRICED, customer_key_sql
from .connection import is_shared, one, output_path
from .teams import IN_TEAM, TEAM_OF_KEY, in_teams
from .transaction import is_write_conflict, transaction

EXPORT_COLUMNS = COLUMN_NAMES + REPRICE_COLUMNS
_TIME_FORMATS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%d %H:00", "month": "%Y-%m"}
# The widest rollup bucket each time group can be summed from (a month starts on a day's edge).
_PERIOD_SECONDS = {"hour": 3600, "day": 86400, "month": 86400}
_COLUMN_OF = {"model": "model", "provider": "provider", "customer": "customer_id", "feature": "feature",
              "key": "key_id", "team": "team"}
_TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
           "images", "characters", *TOOL_NAMES)
# A call that failed: what a report counts as an error and `calls --errors` lists.
FAILED = "(status >= 400 OR outcome <> 'completed')"
_METRICS = f"""
    count(*) AS calls,
    count(*) FILTER (WHERE {FAILED}) AS errors,
    count(*) FILTER (WHERE {UNPRICED}) AS unpriced_calls,
    count(*) FILTER (WHERE usage_source = 'unmetered') AS unmetered_calls,
    count(*) FILTER (WHERE usage_source IN ('estimated', 'partial')) AS estimated_calls,
    {", ".join(f"coalesce(sum({t}), 0)::BIGINT AS {t}" for t in _TOKENS)},
    coalesce(sum(audio_seconds), 0)::DOUBLE AS audio_seconds,
    sum(cost_usd) AS cost_usd,
    quantile_cont(latency_ms, [0.5, 0.95]) AS latency_ms"""
_COUNTS = ("calls", "errors", "unpriced_calls", "unmetered_calls", "estimated_calls")
_METRIC_NAMES = (*_COUNTS, *_TOKENS, "audio_seconds", "cost_usd", "latency_ms")


def dimension_name(dimension: str) -> str:
    """The key a dimension has in a group object: ``customer`` -> ``customer_id``, ``day`` -> ``day``."""
    return _COLUMN_OF.get(dimension, dimension)


# A row of the customer given as a parameter, by its key (calls.CUSTOMER_KEY_COLUMN; NULL: a lake's
# row from before it; rollups.Tier.key_ddl), to be told apart from others with the same key by the text.
_KEY = customer_key_sql("?::VARCHAR")
_KEY_MATCH = f"(customer_key = {_KEY} OR customer_key IS NULL)"


def where(selection: Selection) -> tuple[str, list]:
    """The selection as a condition on raw calls, and its parameters (a statement with it: ``scan``)."""
    clauses, params = _tag_clauses(selection, FAILED)
    clauses, params = clauses + _range_clauses(selection), params + _range_params(selection)
    return " AND ".join(clauses), params


def _range_clauses(selection: Selection) -> list[str]:
    return [c for c, v in (("ts >= ?", selection.since), ("ts < ?", selection.until)) if v is not None]


def _range_params(selection: Selection) -> list:
    return [v for v in (selection.since, selection.until) if v is not None]


def scan(selection: Selection, sql: str, params: list) -> tuple[str, list]:
    """``sql``, a SELECT whose every ``calls`` is filtered by ``where(selection)`` (``params``), that
    reads one customer's calls from the rows with its customer key in the range, picked first into
    a materialized CTE named ``calls``, and checks their text there. With the key and the text in
    one scan, a table of one customer's year at 100M calls took 0.25-0.3 s, and six at once 2.4x
    as long as one after another; picked first, 0.16 s each, alike at once (docs/benchmarks.md)."""
    if selection.customer_id is None:
        return sql, params
    picked, picked_params = _customer_rows("calls", selection, _range_clauses(selection), _range_params(selection))
    return f"WITH calls AS MATERIALIZED ({picked}) {sql}", [*picked_params, *params]


def _customer_rows(table: str, selection: Selection, clauses: list[str], params: list) -> tuple[str, list]:
    """A SELECT of the rows of ``table`` (raw calls, or a tier naming customers) matching ``clauses``
    (``params``) with the customer key of the selection's customer, then those with none (NULL:
    the lake's rows from before s024/s025, found by their text): two scans, since with both in
    one (an OR) DuckDB's statistics skipped no row group (one customer's 15-minute rows of a year
    in customer order, store/customer_order.py: 36 against 4 ms; the largest customer's 278
    against 39 ms)."""
    where = "".join(f" AND {c}" for c in clauses)
    return (f"SELECT * FROM {table} WHERE customer_key = {_KEY}{where} "
            f"UNION ALL SELECT * FROM {table} WHERE customer_key IS NULL{where}",
            [selection.customer_id, *params, *params])


def _tag_clauses(selection: Selection, failed: str, by_key: bool = True) -> tuple[list[str], list]:
    """The selection's filters but its time range, on raw calls or rollup rows (``failed``: how
    that table says a call failed); without the customer key's where ``by_key`` is false (the
    caller picked the rows by it: ``_customer_rows``)."""
    clauses: list[str] = ["TRUE"]
    params: list[object] = []
    for column, value in (("customer_id", selection.customer_id), ("feature", selection.feature),
                          ("model", selection.model), ("key_id", selection.key_id),
                          ("provider", selection.provider), ("status", selection.status)):
        if value is None:
            continue
        if column == "customer_id":
            # By its number first (_KEY_MATCH; raw calls and the tiers naming customers have it), so
            # DuckDB decompresses the text only of the vectors where the number matched (a statement
            # can pick those rows first: ``scan``). The text is compared as an expression (`|| ''`),
            # which the scan checks after the number; as a column against a constant it was checked
            # on every row's text too (a year of 100M calls: 0.76 s, against 0.2 s).
            clauses.append(f"{_KEY_MATCH} AND customer_id || '' = ?" if by_key else "customer_id || '' = ?")
            params += [value, value] if by_key else [value]
            continue
        clauses.append(f"{column} = ?")
        params.append(value)
    if selection.errors_only:
        clauses.append(failed)
    if selection.team is not None:  # through the keys: a moved key takes its history along
        clauses.append(IN_TEAM)
        params.append(selection.team)
    if selection.teams is not None:  # a `team` role's limit (web/auth.py); no team at all: nothing
        clauses.append(in_teams(len(selection.teams)))
        params.extend(selection.teams)
    return clauses, params


class Groups(list[dict]):
    """A report's groups in order; with a limit, the first that many. ``total_groups``: how many
    there are in all; ``rest``: the sums of those left out (as the total's, without percentiles),
    None when none was."""

    def __init__(self, shown: list[dict], total_groups: int, rest: dict | None) -> None:
        super().__init__(shown)
        self.total_groups, self.rest = total_groups, rest


def report(con: duckdb.DuckDBPyConnection, spec: ReportSpec, total_latency: bool = True, exact: bool = False,
           limit: int | None = None, percentiles: bool = True) -> tuple[Groups, dict]:
    """Groups ordered by time (time dimensions) or by cost, and the total.

    Whole buckets come from the coarsest rollup tier that names what the report groups and filters
    by (``_source``: a weekly one of customers or features, the daily or hourly one without them
    when the zone allows, else the 15-minute one) and the finer tiers or raw rows only for a range's
    edges that cut a bucket (store/rollups.py): the same counts, tokens and costs as a scan of every
    row, and the groups' percentiles within rollups.RELATIVE_ERROR (from histograms) or exact over
    the calls kept raw (the sparse tiers: _rollup_groups). The total's percentiles are those of the
    report without groups (``_whole_percentiles``). ``exact`` scans the raw rows (exact percentiles;
    purged calls, which only rollups keep, are then not counted).
    A selection none of whose calls was purged is scanned as ``exact`` would when it has few calls
    (``_few``) or when the 15-minute tier would answer it (``_scan_instead``), unless it is one
    customer's that tier answers better (on the lake, or over weeks in customer order:
    ``_one_customer_from_tier``).
    The total's p50/p95 cost a second pass; ``total_latency=False`` skips it and leaves them None,
    for callers that show only groups. ``limit``: only the first that many groups, and only theirs
    get percentiles (most of the time of a report by customer; one customer's few groups from the
    15-minute tier all get them); the order and the total are those of all groups
    (Groups.total_groups, Groups.rest). ``percentiles=False`` leaves the groups' p50/p95
    None, for callers that draw sums only (the page's chart: merging a year of days by model's
    histograms was most of its 0.6 s at 100M calls)."""
    if exact:
        return _report(con, spec, total_latency, None, limit, percentiles)
    horizon = raw_horizon.since(con)
    unpurged = _unpurged(spec.selection, horizon)
    few = unpurged and _few(con, spec.selection)
    chosen = None if few else _source(con, spec)
    tiered = chosen is not None and _one_customer_from_tier(con, chosen[2], spec.selection)
    instead = chosen is not None and unpurged and not tiered and _scan_instead(con, chosen[2], spec, limit,
                                                                               percentiles)
    if few or instead:
        # In place of the 15-minute tier, the total line's percentiles stay those of the report
        # without groups (which may read another tier), as they are with a limit, which reads that tier.
        apart = instead and bool(spec.by) and total_latency
        groups, found = _report(con, spec, total_latency and not apart, None, limit, percentiles)
        if apart:
            found.update(_whole_percentiles(con, spec, latency=True))
        # A purge that committed since the check removed raw calls this scan then missed: it moves
        # the horizon first (raw_horizon.py), so an unchanged horizon says none did. (In the shared
        # mode this also covers the first query of an older lake, which sets the horizon.)
        if raw_horizon.since(con) == horizon:
            return groups, found
    return _report(con, spec, total_latency, chosen or _source(con, spec), limit, percentiles, histograms=tiered)


def _report(con: duckdb.DuckDBPyConnection, spec: ReportSpec, total_latency: bool,
            chosen: tuple[tuple[str, list] | None, str, rollups.Tier | None] | None, limit: int | None,
            percentiles: bool, histograms: bool = False) -> tuple[Groups, dict]:
    """``report`` from the rollups ``chosen`` (as ``_source`` gives them), or a raw scan (None);
    ``histograms``: the groups' percentiles from the tier's, even where it is sparse."""
    names = [dimension_name(d) for d in spec.by]
    time_names = [n for d, n in zip(spec.by, names) if d in _TIME_FORMATS]
    order = _order_key(names, time_names)
    raw_scan = chosen is None
    source, local, tier = (None, "", None) if chosen is None else chosen
    if source is None and any(d in _TIME_FORMATS for d in spec.by):
        local = _local_time_sql(spec, functools.partial(_data_range, con))
    dims = [_dimension_sql(d, local) for d in spec.by]
    condition, params = where(spec.selection)
    whole_read = False  # the total's percentiles read with its sums
    if source is None:
        # No groups: the one row is the selection's, and the total's percentiles come in the same pass.
        alone = total_latency and not names
        sql = (f"SELECT {_named(dims, names)}{_METRICS}"
               f"{f', quantile_cont(proxy_us, {list(_PROXY_POINTS)})' if alone else ''} FROM calls WHERE {condition} "
               "GROUP BY ALL")
        rows = con.execute(*scan(spec.selection, sql, params)).fetchall()
        groups = sorted((_group(dict(zip([*names, *_METRIC_NAMES], r))) for r in rows), key=order)
        total = _total(con, groups, spec.selection if total_latency and not alone else None)
        if alone:
            total.update({k: groups[0][k] for k in ("p50_latency_ms", "p95_latency_ms")}, **_added(rows[0][-1]))
        shown = _cut(groups, total, limit)
        if not percentiles:  # computed in the same pass here, and cheap over the few calls it reads
            for row in shown:
                row["p50_latency_ms"] = row["p95_latency_ms"] = None
    else:
        raw = (condition, params) if not histograms and _raw_percentiles(tier, bool(names) and limit is None) else None
        if limit is not None and names and not histograms:
            shown, total = _first_groups(con, spec, (source, dims, names, raw), time_names, order, limit,
                                         percentiles)
        elif not names and raw is None and total_latency and percentiles:
            # A total alone: its sums and every percentile from one statement (one customer's year at
            # 100M calls: one scan of the customers' 5.3M weekly rows, 35 ms, where there were two).
            whole = _whole_percentiles(con, spec, latency=True, sums=True, histograms=histograms)
            group = _group({**{name: whole.pop(name) for name in _METRIC_NAMES[:-1]},
                            "latency_ms": (whole.pop("p50_latency_ms"), whole.pop("p95_latency_ms"))})
            total = {**_total(con, [group], None), **whole}
            shown = Groups([group], 1, None)
            whole_read = True
        else:
            # One customer's 15-minute rows (``histograms``) make few groups: each of them summed at
            # once, then cut to the limit, a statement less than ranking them first (~0.1 s of each
            # table of one customer's year on the lake at 100M calls).
            groups = _rollup_groups(con, source, dims, names, raw, order=order, percentiles=percentiles)
            total = _total(con, groups, None)
            shown = _cut(groups, total, limit)
        if total_latency and not names:  # one group, the whole selection: its percentiles are the total's
            total["p50_latency_ms"], total["p95_latency_ms"] = (
                (shown[0]["p50_latency_ms"], shown[0]["p95_latency_ms"]) if shown else (None, None))
    if total_latency and not raw_scan and not whole_read:
        total.update(_whole_percentiles(con, spec, latency=bool(names), histograms=histograms))
    for row in [*shown, total]:
        row["share"] = _share(row["cost_usd"], total["cost_usd"])
    for dimension, name in zip(spec.by, names):
        if dimension in _TIME_FORMATS:
            for row in shown:
                row[name] = row[name].strftime(_TIME_FORMATS[dimension])
    if "key" in spec.by:
        name_keys(con, shown)
    return shown, {**{name: None for name in names}, **total}


def _order_key(names: list[str], time_names: list[str]) -> Callable[[dict], tuple]:
    """A report's order: by time for time dimensions (before they are written as text, which sorts
    alike), then by cost and by calls, most first; the names break ties so the order never varies."""
    return lambda r: (*[r[n] for n in time_names], -(r["cost_usd"] or 0), -r["calls"], *[str(r[n]) for n in names])


def _cut(groups: list[dict], total: dict, limit: int | None) -> Groups:
    """Every group of a report, in order, cut to the first ``limit`` (None: all), with the rest's sums."""
    shown = groups[:limit]
    return Groups(shown, len(groups), _rest(total, shown, groups[len(shown):]))


def _rest(total: dict, shown: list[dict], left: list[dict]) -> dict | None:
    """The sums of the groups a limit ``left`` out, with their share of the total cost."""
    if not left:
        return None
    return _rest_of(total, shown, any(g["cost_usd"] is not None for g in left))


def _rest_of(total: dict, shown: list[dict], priced: bool) -> dict:
    """The total's sums less the ``shown`` groups': those of the groups left out (a pass over a
    million groups per sum would take seconds). Counts and costs subtract exactly; no cost when no
    group left out was ``priced``, as a group of unpriced calls has none."""
    rest = {name: total[name] - sum(g[name] for g in shown) for name in (*_COUNTS, *_TOKENS)}
    rest["cost_usd"] = total["cost_usd"] - sum(g["cost_usd"] or 0 for g in shown) if priced else None
    rest["audio_seconds"] = max(0.0, _milliseconds(total["audio_seconds"] - sum(g["audio_seconds"] for g in shown)))
    rest.update(p50_latency_ms=None, p95_latency_ms=None, share=_share(rest["cost_usd"], total["cost_usd"]))
    return rest


def _first_groups(con: duckdb.DuckDBPyConnection, spec: ReportSpec,
                  grouping: tuple[tuple[str, list], list[str], list[str], tuple[str, list] | None],
                  time_names: list[str], order: Callable[[dict], tuple], limit: int,
                  percentiles: bool = True) -> tuple[Groups, dict]:
    """The first ``limit`` groups of the rollup rows ``source`` (``grouping``: as _rollup_groups
    takes them) and the total: the groups ranked in SQL by what the report orders by (the time
    groups, the cost, the calls, the names as text, as ``_order_key``), their other sums and
    percentiles for the shown groups alone, the total's sums from the report without groups
    (``_whole_sums``: the same sums, from the smallest tier that holds them) when some are left
    out. At 100,000 customers, summing every column of every group took most of a report."""
    (sql, params), dims, names, raw = grouping
    grouped = f"SELECT {_named(dims, names)}* FROM ({sql})"
    ranks = ", ".join([*time_names, "coalesce(cost_usd, 0) DESC", "calls DESC",
                       *(f"coalesce({n}::VARCHAR, 'None')" for n in names)])  # str(None) in _order_key
    picked = con.execute(f"""
        SELECT {''.join(f'{n}, ' for n in names)}count(*) OVER (), count(cost_usd) OVER ()
        FROM (SELECT {''.join(f'{n}, ' for n in names)}sum(cost_usd) AS cost_usd, sum(calls) AS calls
              FROM ({grouped}) GROUP BY ALL)
        ORDER BY {ranks} LIMIT {int(limit)}""", params).fetchall()
    count, priced = (picked[0][-2], picked[0][-1]) if picked else (0, 0)
    # Every group shown: no filter to apply (it would read the rows of each once more), and their
    # sums add up to the total (a statement less: ~0.1 s of a table of one customer on the lake at 100M).
    keys = [dict(zip(names, row)) for row in picked] if count > len(picked) else None
    groups = _rollup_groups(con, (sql, params), dims, names, raw, order=order, among=keys, percentiles=percentiles)
    total = _whole_sums(con, spec) if keys is not None else _total(con, groups, None)
    left_priced = priced > sum(g["cost_usd"] is not None for g in groups)
    return Groups(groups, count, _rest_of(total, groups, left_priced) if count > len(groups) else None), total


def _whole_sums(con: duckdb.DuckDBPyConnection, spec: ReportSpec) -> dict:
    """The sums of the whole selection, as the report without groups reads them."""
    source, _, _ = _source(con, replace(spec, by=()))
    assert source is not None  # without time groups, the 15-minute tier fits whatever the filters
    row = one(con.execute(f"SELECT {_ROLLUP_METRICS} FROM ({source[0]})", source[1]))
    return _total(con, [dict(zip(_METRIC_NAMES[:-1], row))], None)


def total(con: duckdb.DuckDBPyConnection, spec: ReportSpec, exact: bool = False) -> dict:
    """The total of ``report(con, spec)`` alone: one group, the whole selection, without the groups'
    sums and percentiles (``_whole_percentiles``). Whatever ``spec`` groups by, no dimension is named
    (the API's total of a `by=model` request had a `model: null`)."""
    return report(con, replace(spec, by=()), exact=exact)[1]


def _raw_percentiles(tier: rollups.Tier | None, many_groups: bool) -> bool:
    """Whether a report over ``tier`` takes its groups' percentiles from the raw rows: over a sparse
    tier (about a call per histogram bin, so merging bins costs more than reading the calls), unless
    the tier is weekly and the groups are few (a limit's, the page's top 50, or the one of a report
    without groups): a row per week each, where the raw rows of the 50 costliest of 100,000
    customers, or a scan for one customer's, take seconds at 100M calls. Within 0.99% then."""
    return tier is not None and tier.sparse and (many_groups or tier.seconds < rollups.WEEK.total_seconds())


def _whole_percentiles(con: duckdb.DuckDBPyConnection, spec: ReportSpec, latency: bool, sums: bool = False,
                       histograms: bool = False) -> dict:
    """The whole selection's p50/p99 time in the proxy (and, given ``latency``, p50/p95 latency) as
    the report without groups takes them (``total``), from the tier it reads: a report's total line
    shows the same numbers whatever it groups by, and reads the smallest tier that holds them (a
    whole year of 100M calls: the totals' weeks and days, not every raw call's proxy_us, 2 s). Given ``sums``
    (only where that tier's histograms give the percentiles), the selection's sums too, from the
    same statement (_METRIC_NAMES but latency_ms). ``histograms``: from the tier's histograms even
    where it is sparse (one customer's: ``_one_customer_from_tier``)."""
    source, _, tier = _source(con, replace(spec, by=()))
    found: dict = {}
    condition, params = where(spec.selection)
    if source is not None and (histograms or not _raw_percentiles(tier, many_groups=False)):
        # One statement, the rows read once (for one customer's year, each pass scanned the 5.3M
        # weekly rows of 100,000 customers: 40 ms): the histograms' quantile columns, then whether
        # some rows, summed before the rollups kept proxy_us (m032), have no histogram of it.
        merged = [(name, points) for name, points in (("latency", _POINTS), ("proxy", _PROXY_POINTS))
                  if latency or name == "proxy"]
        parts = [f"({rollups.quantile_sql('SELECT * FROM kept', [], points, name)})" for name, points in merged]
        if sums:
            parts.insert(0, f"({_sums('SELECT * FROM kept', [])})")
        row = one(con.execute(f"WITH kept AS MATERIALIZED ({source[0]}) SELECT * FROM {', '.join(parts)}, "
                              "(SELECT bool_or(proxy IS NULL) FROM kept)", source[1]))
        if sums:
            found.update(zip(_METRIC_NAMES[:-1], row))
            row = row[len(_METRIC_NAMES) - 1:]
        quantiles = {}
        for name, points in merged:
            width = 1 + 2 * len(points)
            quantiles[name], row = rollups.quantiles([row[:width]], points).get(()), row[width:]
        if latency:
            found["p50_latency_ms"], found["p95_latency_ms"] = _rounded(quantiles["latency"])
        if not row[0]:
            return {**found, **_added(quantiles["proxy"])}
        # Those calls' values are still in the raw rows (or purged with them).
        return {**found, **_added(one(con.execute(*scan(spec.selection, f"SELECT quantile_cont(proxy_us, "
                                                  f"{list(_PROXY_POINTS)}) FROM calls WHERE {condition}", params)))[0])}
    assert not sums, "a raw scan's sums are the report's own pass"
    times, added = one(con.execute(*scan(spec.selection, f"SELECT quantile_cont(latency_ms, {list(_POINTS)}), "
                                        f"quantile_cont(proxy_us, {list(_PROXY_POINTS)}) FROM calls WHERE {condition}",
                                        params)))
    if latency:
        found["p50_latency_ms"], found["p95_latency_ms"] = _rounded(times)
    return {**found, **_added(added)}


# A range of at most this many raw calls is scanned rather than read from the rollups: at such
# sizes a rollup row holds about one call, so merging their histograms costs more than reading
# the rows (docs/benchmarks.md, "The API of a running proxy"), and the percentiles come out exact.
RAW_SCAN_MAX = 50_000


def _unpurged(selection: Selection, horizon: dt.datetime) -> bool:
    """Whether the selection starts at or after the purge ``horizon`` (raw_horizon.py): a scan of its
    raw rows then counts what the rollups would."""
    return horizon == raw_horizon.EVER or (selection.since is not None and selection.since >= horizon)


def _few(con: duckdb.DuckDBPyConnection, selection: Selection) -> bool:
    """Whether a scan of the selection reads at most RAW_SCAN_MAX calls: those of its time range,
    whatever its filters. A filter (a customer, a feature) skips no row of the range, so one
    customer's 400 calls in a year of 100M took 1.6 s to count and 0.85 s to scan, where the
    rollups answered in 0.1 s; and counting them stopped at the limit only for a frequent one."""
    condition, params = where(Selection(since=selection.since, until=selection.until))
    (found,) = one(con.execute(f"SELECT count(*) FROM (SELECT 1 FROM calls WHERE {condition} LIMIT ?)",
                               [*params, RAW_SCAN_MAX + 1]))
    return found <= RAW_SCAN_MAX


# Whether a report the 15-minute tier would answer scans the raw rows instead (``_scan_instead``);
# tests about that tier turn it off.
RAW_OVER_FINE = True


def _scan_instead(con: duckdb.DuckDBPyConnection, tier: rollups.Tier | None, spec: ReportSpec, limit: int | None,
                  percentiles: bool) -> bool:
    """Whether one scan of the raw rows answers a report better than ``tier``, the 15-minute one:
    when it holds about a row per call (``_fine_is_sparse``), as with many customers, since its
    groups' percentiles come from the raw rows anyway (_raw_percentiles) and the calls were read
    after the tier (one customer's days over a year of 100M calls: 1.59 s, scanned 0.81 s). Not
    without percentiles (the tier's sums alone), nor for a limit's groups (ranked over the tier,
    the raw rows read for the shown groups alone: the 50 costliest of 100,000 customers), unless
    the report is one customer's: its groups are few, and its calls found by their customer key
    (where), where the tier's rows are found by the text (the page's model, key, feature and team
    tables of one customer's year at 100M calls: 2.7 s each, scanned 0.31-0.37 s; its chart's sums
    0.93 -> 0.37 s)."""
    one_customer = spec.selection.customer_id is not None
    return (RAW_OVER_FINE and tier is rollups.FINE and (percentiles or one_customer)
            and (limit is None or not spec.by or one_customer) and _fine_is_sparse(con))


# At most this much of a range in weeks not yet in customer order (the current one, and the last
# until it is ordered, customer_order.SETTLE and a round after it ended) and one customer's rows
# are read from the 15-minute tier.
UNORDERED_MAX = dt.timedelta(days=15)


def _one_customer_from_tier(con: duckdb.DuckDBPyConnection, tier: rollups.Tier | None,
                            selection: Selection) -> bool:
    """Whether a report of one customer reads the 15-minute ``tier``, its percentiles from the
    histograms too, rather than the raw calls (``_scan_instead``). In the file, when the weeks of
    its range are in customer order (store/customer_order.py) but for at most UNORDERED_MAX: its
    rows sit together there, where its raw calls are spread over the whole table (the page's
    tables of one customer's year at 100M calls: 0.06 s each, scanned 0.17-0.2 s; the largest
    customer's, a call in every vector, 0.14-0.16 s, scanned 1.9-2.0 s). On the lake, always: its
    Parquet files answer one customer's 15-minute rows of a year in 0.1 s unordered, where its raw
    calls' costs and text take 0.55-1.6 s (docs/benchmarks.md). Percentiles within
    rollups.RELATIVE_ERROR."""
    if tier is not rollups.FINE or selection.customer_id is None:
        return False
    if is_shared(con):
        return True
    unordered = customer_order.unordered_span(con, selection.since, selection.until)
    return unordered is not None and unordered <= UNORDERED_MAX


def _fine_is_sparse(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the 15-minute tier holds at least a row for every two calls, by the row counts DuckDB
    keeps (no scan). Where few customers share each bucket's calls it is many times smaller (5M
    calls of 3 customers: 306k rows), and reading it and then the raw calls' latencies costs less
    than scanning every column of the raw rows (one customer's days: 0.09 against 0.22 s)."""
    sizes = dict(con.execute("SELECT table_name, estimated_size FROM duckdb_tables() "
                             "WHERE database_name = current_database() AND table_name IN ('calls', ?)",
                             [rollups.FINE.table]).fetchall())
    return (sizes.get(rollups.FINE.table) or 0) * 2 >= (sizes.get("calls") or 0) > 0


_ROLLUP_METRICS = (f"{', '.join(f'coalesce(sum({c}), 0)::BIGINT AS {c}' for c in (*_COUNTS, *_TOKENS))}, "
                   f"coalesce(sum(audio_seconds), 0)::DOUBLE AS audio_seconds, sum(cost_usd) AS cost_usd")
_POINTS = (0.5, 0.95)
_PROXY_POINTS = (0.5, 0.99)  # of the time in the proxy's hooks: its tail is what a user weighs


def _source(con: duckdb.DuckDBPyConnection, spec: ReportSpec, tiers: tuple[rollups.Tier, ...] = rollups.TIERS,
            ) -> tuple[tuple[str, list] | None, str, rollups.Tier | None]:
    """The rollup rows a report reads and its local time expression (store/rollups.py): the first
    of ``tiers`` (``_in_preference``) whose buckets fit the report (``_fits``), when the zone's
    offsets are whole buckets over the range for a report grouped by time (whole days: UTC, for
    the daily tiers); else (None, "", None): raw rows."""
    timed = any(d in _TIME_FORMATS for d in spec.by)
    fitting = _in_preference(t for t in tiers if _fits(spec, t))
    data_range = functools.cache(functools.partial(_data_range, con))  # once, whatever the tiers tried
    for tier in fitting:
        source = _rollup_source(spec.selection, tier, fitting)
        if not timed:
            return source, "", tier
        local = _local_time_sql(spec, data_range, tier.seconds)
        if local:
            return source, local, tier
    return None, "", None


def _in_preference(tiers: Iterable[rollups.Tier]) -> tuple[rollups.Tier, ...]:
    """The tier naming no tag first (the totals' days: a total of a year reads 365 rows in one scan,
    where the features' weeks and the days at their edges were three scans, each ~6-9 ms of
    DuckLake's catalog queries: docs/benchmarks.md, "The totals' days"), then the widest buckets
    first; of two as wide, the first in TIERS (the narrower)."""
    return tuple(sorted(tiers, key=lambda t: (bool(t.dimensions), -t.seconds)))


def _fits(spec: ReportSpec, tier: rollups.Tier) -> bool:
    """Whether ``tier``'s rows name everything the report groups and filters by, in buckets no
    wider than its time groups (the zone is _local_time_sql's to judge)."""
    widest = min((_PERIOD_SECONDS[d] for d in spec.by if d in _TIME_FORMATS), default=tier.seconds)
    return tier.seconds <= widest and _columns_named(spec) <= set(tier.dimensions)


def _columns_named(spec: ReportSpec) -> set[str]:
    """The columns of calls (and rollup rows) the report's groups and filters read."""
    selection = spec.selection
    named = {_COLUMN_OF[d] for d in spec.by if d in _COLUMN_OF}
    for column, value in (("customer_id", selection.customer_id), ("feature", selection.feature),
                          ("model", selection.model), ("key_id", selection.key_id),
                          ("provider", selection.provider), ("status", selection.status),
                          ("failed", selection.errors_only or None), ("team", selection.team),
                          ("team", selection.teams)):
        if value is not None:
            named.add(column)
    return {"key_id" if c == "team" else c for c in named}  # a team is its keys'


def _rollup_source(selection: Selection, tier: rollups.Tier, fitting: tuple[rollups.Tier, ...]) -> tuple[str, list]:
    """A SELECT of rollup rows of ``tier``'s columns (``ts``: the bucket) for the selection: the stored
    ones of ``tier`` for its whole buckets, the next finer of the ``fitting`` tiers' for the edges
    that cut one (a week's days, a day's hours, an hour's quarters, and at last sums of raw rows)."""
    width = dt.timedelta(seconds=tier.seconds)
    try:
        low = _bucket_ceil(selection.since, width) if selection.since is not None else None
        high = _bucket_floor(selection.until, width) if selection.until is not None else None
    except OverflowError:  # an edge in the calendar's first or last bucket (1 Jan 1, 31 Dec 9999): no whole one
        return _finer_source(selection, tier, fitting)
    if low is not None and high is not None and low >= high:  # within one bucket
        return _finer_source(selection, tier, fitting)
    clauses, params = _tag_clauses(selection, "failed", by_key=False)
    bounds = [(b, v) for b, v in (("bucket >= ?", low), ("bucket < ?", high)) if v is not None]
    clauses, params = [*clauses, *(b for b, _ in bounds)], [*params, *(v for _, v in bounds)]
    rows = (_customer_rows(tier.table, selection, clauses, params) if selection.customer_id is not None
            else (f"SELECT * FROM {tier.table} WHERE {' AND '.join(clauses)}", params))
    parts, params = [f"SELECT * EXCLUDE (bucket), bucket AS ts FROM ({rows[0]})"], rows[1]
    for start, end in ((selection.since, low), (high, selection.until)):
        if start is None or end is None or start == end:
            continue
        finer, finer_params = _finer_source(replace(selection, since=start, until=end), tier, fitting)
        parts.append(finer)
        params += finer_params
    return " UNION ALL BY NAME ".join(f"SELECT * FROM ({part})" for part in parts), params


def _finer_source(selection: Selection, tier: rollups.Tier, fitting: tuple[rollups.Tier, ...]) -> tuple[str, list]:
    """Rows for a range within ``tier``'s buckets' edges, from the widest of the ``fitting`` tiers
    with narrower buckets, which nest in ``tier``'s (of two as wide, the first in ``fitting``): a
    total's partial days from the hours, not from ~a 15-minute row per call (below the 15-minute
    tier: sums of raw rows). Columns of ``tier`` a finer tier lacks are NULL: the report names none
    of them."""
    finer = max((t for t in fitting if t.seconds < tier.seconds), key=lambda t: t.seconds, default=None)
    if finer is None:
        condition, params = where(selection)
        summed = rollups.aggregate(f"SELECT * FROM calls WHERE {condition}")
        return f"SELECT * EXCLUDE (bucket), bucket AS ts FROM ({summed})", params
    sql, params = _rollup_source(selection, finer, fitting)
    dropped = [d for d in finer.dimensions if d not in tier.dimensions]
    return (f"SELECT * EXCLUDE ({', '.join(dropped)}) FROM ({sql})" if dropped else sql), params


def _bucket_floor(at: dt.datetime, width: dt.timedelta = rollups.BUCKET) -> dt.datetime:
    return rollups.bucket_start(at, int(width.total_seconds()))


def _bucket_ceil(at: dt.datetime, width: dt.timedelta = rollups.BUCKET) -> dt.datetime:
    return rollups.bucket_after(at, int(width.total_seconds()))


def _rollup_groups(con: duckdb.DuckDBPyConnection, source: tuple[str, list], dims: list[str], names: list[str],
                   raw: tuple[str, list] | None, *, order: Callable[[dict], tuple],
                   among: list[dict] | None = None, percentiles: bool = True) -> list[dict]:
    """The groups ``among`` (None: all) of the rollup rows of ``source``, sorted by ``order``: sums,
    and percentiles from their histograms, or, given ``raw`` (a condition on calls and its
    parameters), exact over the raw rows. The 15-minute and customers' tiers hold about one call per
    histogram bin: merging bins there costs several times quantile_cont over the raw rows
    (docs/benchmarks.md, "Rollups against raw scans"), so their reports take exact percentiles of
    the calls still kept raw."""
    sql, params = source
    grouped = f"SELECT {_named(dims, names)}* FROM ({sql})"
    kept, kept_params = _among((grouped, params), names, among)
    width = len(names) + len(_METRIC_NAMES) - 1
    if percentiles and raw is None and among is not None and names:
        # A limit's groups, some left out: their rows (found by a scan of the tier: ~100 ms for the 5.3M
        # weekly rows of 100,000 customers' year) are read once for the sums and the histograms. (Kept
        # whole, every group's rows cost more to hold than to read twice: 125 against 97 ms by key. A
        # total alone reads its sums with every percentile: _whole_percentiles.)
        rows = con.execute(_sums_and_quantiles(kept, names), kept_params).fetchall()
        found = rollups.quantiles([(*r[:len(names)], *r[width:]) for r in rows], _POINTS)
    else:
        rows = con.execute(_sums(kept, names), kept_params).fetchall()
        found = _group_quantiles(con, (grouped, params), dims, names, raw, among) if percentiles else {}
    groups = sorted((dict(zip([*names, *_METRIC_NAMES[:-1]], r[:width])) for r in rows), key=order)
    for row in groups:
        row["latency_ms"] = found.get(tuple(row[n] for n in names))
        _group(row)
    return groups


def _sums(rows: str, names: list[str]) -> str:
    """The sums of the rollup rows of the SELECT ``rows`` per group of ``names``."""
    return f"SELECT {''.join(f'{n}, ' for n in names)}{_ROLLUP_METRICS} FROM ({rows}) GROUP BY ALL"


def _sums_and_quantiles(rows: str, names: list[str]) -> str:
    """``_sums`` followed by the quantile columns of the groups' histograms (rollups.quantile_sql),
    the SELECT ``rows`` read once."""
    merged = rollups.quantile_sql("SELECT * FROM kept", names, _POINTS)
    on = " AND ".join(f"s.{n} IS NOT DISTINCT FROM q.{n}" for n in names)
    return (f"WITH kept AS MATERIALIZED ({rows}), s AS ({_sums('SELECT * FROM kept', names)}) "
            f"SELECT s.*, q.* EXCLUDE ({', '.join(names)}) FROM s LEFT JOIN ({merged}) q ON {on}")


def _named(dims: list[str], names: list[str]) -> str:
    """The start of a select list: each dimension's expression as its name, each with a comma."""
    return "".join(f"{d} AS {n}, " for d, n in zip(dims, names))


def _group_quantiles(con: duckdb.DuckDBPyConnection, grouped: tuple[str, list], dims: list[str], names: list[str],
                     raw: tuple[str, list] | None, among: list[dict] | None) -> dict[tuple, tuple]:
    """{group: (p50, p95)}: from the histograms of the rollup rows ``grouped``, or over the raw rows;
    for the groups ``among`` alone (None: every group)."""
    if raw is None:
        sql, params = _among(grouped, names, among)
        return rollups.quantiles(con.execute(rollups.quantile_sql(sql, names, _POINTS), params).fetchall(), _POINTS)
    sql, params = _among((f"SELECT {_named(dims, names)}latency_ms FROM calls WHERE {raw[0]}", raw[1]), names, among)
    return {tuple(r[:-1]): r[-1] for r in con.execute(
        f"SELECT {''.join(f'{n}, ' for n in names)}quantile_cont(latency_ms, {list(_POINTS)}) FROM ({sql}) "
        f"GROUP BY ALL", params).fetchall()}


# The SQL type of each group column that is not text: the values a limit keeps arrive as JSON text.
_GROUP_TYPES = {"key_id": "INTEGER", **dict.fromkeys(_TIME_FORMATS, "TIMESTAMP")}


def _among(rows: tuple[str, list], names: list[str], groups: list[dict] | None) -> tuple[str, list]:
    """The rows of the SELECT ``rows`` (a column per name) that are in one of ``groups`` (None: all);
    a NULL (calls without a customer) is the group of NULLs."""
    sql, params = rows
    if groups is None or not names:
        return sql, params
    columns = [(n, _GROUP_TYPES.get(n, "VARCHAR")) for n in names]
    # Each column's values also as a list DuckDB checks in the scan, so other groups' rows are skipped
    # before their histograms are read (the semi join alone read them all: 200 against 140 ms for the
    # 50 costliest of 100,000 customers' year). Times are expressions of the bucket, not pushed down.
    listed = [(n, t, [g[n] for g in groups if g[n] is not None]) for n, t in columns if n not in _TIME_FORMATS]
    kept = " AND ".join(f"(list_contains(?::{t}[], {n}){' OR ' + n + ' IS NULL' if len(values) < len(groups) else ''})"
                        for n, t, values in listed) or "TRUE"
    on = " AND ".join(f"g.{n} IS NOT DISTINCT FROM c.{n}" for n in names)
    return (f"SELECT g.* FROM (SELECT * FROM ({sql}) WHERE {kept}) g SEMI JOIN ({batch.select(columns)}) c ON {on}",
            [*params, *(values for _, _, values in listed), batch.param(columns, groups)])


def unmetered_endpoints(con: duckdb.DuckDBPyConnection, selection: Selection) -> list[dict]:
    """Billable endpoints the proxy forwarded without metering them: unpriced calls, by endpoint."""
    return unpriced_endpoints(con, selection, ("unmetered",))


# Answers of metered endpoints whose usage the proxy could not read ('none': absent, 'invalid': not
# believed): unpriced as an unknown model's calls are, for another reason (each row's ``error``).
USAGE_UNKNOWN = ("none", "invalid")


def unpriced_endpoints(con: duckdb.DuckDBPyConnection, selection: Selection, sources: tuple[str, ...],
                       without_model: bool = False) -> list[dict]:
    """Unpriced calls whose ``usage_source`` is one of ``sources`` (``without_model``: or that name
    no model, whose usage no price can take), by endpoint, with the reason the latest of them gave
    (its ``error``)."""
    condition, params = where(selection)
    nameless = "OR model IS NULL AND usage_source <> 'unmetered'" if without_model else ""
    cur = con.execute(*scan(selection, f"""
        SELECT provider, endpoint, usage_source, count(*) AS calls, max(ts) AS last_seen, arg_max_null(error, ts)
        FROM calls WHERE {condition} AND {UNPRICED} AND (usage_source IN (SELECT unnest(?::VARCHAR[])) {nameless})
        GROUP BY provider, endpoint, usage_source ORDER BY calls DESC, provider, endpoint, usage_source""",
                            [*params, list(sources)]))
    return [dict(zip(("provider", "endpoint", "usage_source", "calls", "last_seen", "reason"), v, strict=True))
            for v in cur.fetchall()]


# How far back from its newest end the lake looks for a page of calls first, widening until the
# page is full: a bound on the time lets it skip every file before it (without one, its top-N read
# the time of all 100M calls: 2-3 s for the page's 15 newest). The file's top-N is quicker in one
# statement (at 100M: 7 against 67 ms for the newest 15, 66 against 171 ms for a customer's).
RECENT_WINDOWS = (dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(days=7), dt.timedelta(days=31))


def calls_page(con: duckdb.DuckDBPyConnection, selection: Selection, limit: int,
               after: tuple[dt.datetime, uuid.UUID] | None) -> list[dict]:
    """Newest first; ``after`` is the (ts, id) of the last row of the previous page (keyset paging).
    On the lake, looked for in RECENT_WINDOWS back from the newest end (the cursor's time, ``until``,
    or now, whichever is earliest: rows stamped after now are in every window), then in the whole
    selection."""
    condition, params = where(selection)
    if after is not None:
        condition += " AND (ts < ? OR (ts = ? AND id < ?))"
        params += [after[0], after[0], after[1]]
    now = dt.datetime.now(dt.UTC)
    newest = min(after[0] if after is not None else selection.until or now, now)
    select = f"SELECT {', '.join(EXPORT_COLUMNS)} FROM calls WHERE {condition}"
    for width in (*(RECENT_WINDOWS if is_shared(con) else ()), None):
        start = _window_start(newest, width)
        if start is not None and selection.since is not None and start <= selection.since:
            start = None  # the window holds the whole selection
        # Every row after ``start`` is in this window, so when it fills the page, the page is right.
        window, window_params = ("", []) if start is None else (" AND ts >= ?", [start])
        found = con.execute(f"{select}{window} ORDER BY ts DESC, id DESC LIMIT ?",
                            [*params, *window_params, limit]).fetchall()
        if start is None or len(found) >= limit:
            break
    return name_keys(con, [dict(zip(EXPORT_COLUMNS, values)) for values in found])


def _window_start(newest: dt.datetime, width: dt.timedelta | None) -> dt.datetime | None:
    """``width`` before ``newest``; None (no bound) for the last window, or before the year 1."""
    if width is None:
        return None
    try:
        return newest - width
    except OverflowError:
        return None


def name_keys(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> list[dict]:
    """Adds ``key_name`` to rows with a ``key_id``: what people call the key (keys.labels), None if
    the key is gone. Only the names of keys the rows already hold: a key sees its own name alone."""
    labels = key_rows.labels(con)
    for row in rows:
        row["key_name"] = labels.get(row["key_id"])
    return rows


# Text that callers or upstreams choose. A spreadsheet runs a CSV cell starting with one of
# these as a formula (=HYPERLINK(...)), so in CSV such a cell gets a leading apostrophe.
_CALLER_TEXT = ("customer_id", "feature", "model", "error", "endpoint")
_FORMULA_START = "'=', '+', '-', '@', chr(9), chr(13)"


# Every export, from the CLI or the API, is this COPY; the formats and their media types.
EXPORT_FORMATS = {"csv": "text/csv", "json": "application/json", "jsonl": "application/x-ndjson",
                  "parquet": "application/vnd.apache.parquet"}
# Text formats write times as Python's isoformat does in the JSON API (always with microseconds),
# booleans as true/false, and money without trailing zeros (a JSON number, as the API writes it): one dialect.
_ISO_UTC = "%Y-%m-%dT%H:%M:%S.%f+00:00"
_TIMES = ("ts", "repriced_at")
_MONEY = ("cost_usd", "previous_cost_usd")


def export_sql(selection: Selection, fmt: str, newest: int | None = None) -> tuple[str, list]:
    """Without ``newest``, no ORDER BY, so memory stays flat at any size: rows come roughly in time
    order, not exactly. With it, the newest that many rows, newest first."""
    condition, params = where(selection)
    columns = [f"{_export_expr(c, fmt)} AS {c}" for c in EXPORT_COLUMNS]
    order = f" ORDER BY ts DESC, id LIMIT {int(newest)}" if newest is not None else ""
    return f"SELECT {', '.join(columns)} FROM calls WHERE {condition}{order}", params


def _export_expr(column: str, fmt: str) -> str:
    if fmt == "parquet":
        return column  # typed columns
    if column in _TIMES:
        return f"strftime({column}, '{_ISO_UTC}')"
    if column.endswith("_ms"):  # to the microsecond, as the API writes durations (serialize.json_row)
        return f"round({column}, 3)"
    if fmt == "csv" and column in _MONEY:
        return f"rtrim(rtrim({column}::VARCHAR, '0'), '.')"
    if column in _MONEY:  # JSON: a number in its shortest form (0.001852), as the API writes it
        return f"{column}::DOUBLE"
    if fmt == "csv" and column in _CALLER_TEXT:
        return f"CASE WHEN left({column}, 1) IN ({_FORMULA_START}) THEN chr(39) || {column} ELSE {column} END"
    return column


def copy_out(con: duckdb.DuckDBPyConnection, selection: Selection, path: str, fmt: str,
             newest: int | None = None) -> None:
    """DuckDB writes the file itself, streaming: csv, jsonl (one object a line), json (an array), parquet."""
    options = {"csv": "FORMAT csv, HEADER true", "jsonl": "FORMAT json", "json": "FORMAT json, ARRAY true",
               "parquet": "FORMAT parquet"}[fmt]
    sql, params = export_sql(selection, fmt, newest)
    con.execute("SET TimeZone = 'UTC'")
    # Keeping insertion order makes DuckDB buffer what parallel threads read ahead: memory then
    # grows with the row count (measured: 1.8 GB for 10M rows). Without it COPY streams.
    con.execute(f"SET preserve_insertion_order = {'true' if newest is not None else 'false'}")
    with output_path(con, path) as target:
        con.execute(f"COPY ({sql}) TO '{_quote(target)}' ({options})", params)


def count(con: duckdb.DuckDBPyConnection, selection: Selection) -> int:
    condition, params = where(selection)
    return one(con.execute(*scan(selection, f"SELECT count(*) FROM calls WHERE {condition}", params)))[0]


_REPRICE_INPUT = ("id", "ts", "provider", "model", "input_tokens", "cache_read_tokens", "cache_write_tokens",
                  "cache_write_1h_tokens", "output_tokens", "reasoning_tokens", "web_search_requests",
                  "cost_usd", "price_source", "service_tier", *UNIT_NAMES)


# A batch's usage row (addon/batches.py): its requests' counts summed, no latency of its own.
_SUMMED = "coalesce(service_tier = 'batch' AND latency_ms IS NULL, false)"


def reprice_inputs(con: duckdb.DuckDBPyConnection, selection: Selection, unpriced_only: bool = False) -> Iterator[dict]:
    """The rows a reprice may price again, with _REPRICE_INPUT and ``summed`` (a batch's row)."""
    condition, params = where(selection)
    # Unit columns of rows stored before they existed (replayed spill files) are NULL: none used.
    names = ", ".join(f"coalesce({c}, 0)" if c in UNIT_NAMES else c for c in _REPRICE_INPUT)
    cur = con.execute(f"SELECT {names}, {_SUMMED} FROM calls WHERE {condition} "
                      f"{'AND NOT priced' if unpriced_only else ''} "
                      f"AND usage_source NOT IN ('none', 'invalid', 'unmetered')", params)
    while rows := cur.fetchmany(50_000):
        yield from (dict(zip((*_REPRICE_INPUT, "summed"), r)) for r in rows)


# How long a reprice tries again when its rows were being changed by another transaction.
REPRICE_WAITS_S = 60


def apply_reprice(con: duckdb.DuckDBPyConnection,
                  changes: list[tuple[uuid.UUID, Decimal | None, str | None, str | None]]) -> None:
    """Set new costs (id, cost, price source, price snapshot), keeping the old cost and its price
    source in previous_*; the rollups of the buckets they are in are summed again, in the same
    transaction (store/rollups.py)."""
    if not changes:
        return
    columns = [("id", "UUID"), ("cost", COST_TYPE), ("source", "VARCHAR"), ("snapshot", "VARCHAR")]
    rows = [dict(zip(("id", "cost", "source", "snapshot"), change, strict=True)) for change in changes]
    param = batch.param(columns, rows)
    deadline = time.monotonic() + REPRICE_WAITS_S
    while True:
        try:
            with transaction(con):
                changed = f"id IN (SELECT n.id FROM ({batch.select(columns)}) n)"
                rollups.keep_remainders(con, changed, [param])  # before the calls change
                con.execute(f"""
                    UPDATE calls SET previous_cost_usd = calls.cost_usd, previous_price_source = calls.price_source,
                                     cost_usd = n.cost, priced = n.cost IS NOT NULL, price_source = n.source,
                                     price_snapshot = n.snapshot, repriced_at = now()
                    FROM ({batch.select(columns)}) n
                    WHERE calls.id = n.id AND (calls.cost_usd IS DISTINCT FROM n.cost
                        OR calls.price_source IS DISTINCT FROM n.source
                        OR calls.price_snapshot IS DISTINCT FROM n.snapshot)
                """, [param])
                rollups.rebuild(con, changed, [param], kept=True)
            return
        except duckdb.TransactionException as exc:
            # The file's owner putting a week in customer order (customer_order.py), or another
            # reprice, changed the same rows first: this transaction is rolled back whole, so run it
            # again once that one ended (a week at 100M calls a year: 6-26 s). A call already at its
            # new price is left as it is (above), so its previous cost stays the one before.
            if not is_write_conflict(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _dimension_sql(dimension: str, local_time: str) -> str:
    if dimension in _TIME_FORMATS:
        return f"date_trunc('{dimension}', {local_time})"
    if dimension == "team":  # through the call's key, as it is now: a moved key takes its history along
        return TEAM_OF_KEY
    return _COLUMN_OF[dimension]


def _local_time_sql(spec: ReportSpec, data_range: Callable[[], tuple[dt.datetime | None, dt.datetime | None]],
                    buckets: int | None = None) -> str:
    """``ts`` as local wall-clock time in the report's zone, as a SQL expression.

    Converting with the ICU time zone functions costs ~1 s per 10M rows; a zone's offset only
    changes at a few known instants, so the offsets in force over the selected range become a
    CASE over ``ts`` added to its epoch: the same result at a tenth of the cost. Over rollup rows
    of ``buckets`` seconds (None: raw rows): "" when the zone's offsets are not whole buckets.

    The range is the selection's when it has both ends, at most OFFSETS_SPAN apart; else the
    selection's within the data's (``data_range``: ``_data_range``, its filters aside: one
    customer's first and last call took a scan of 1.2 s at 100M calls, where the data's cost 3 ms)."""
    zone = zoneinfo.ZoneInfo(spec.selection.tz)
    since, until = spec.selection.since, spec.selection.until
    if since is not None and until is not None and until - since <= OFFSETS_SPAN:
        found = _offsets_sql(zone, since, until - dt.timedelta(microseconds=1), buckets)
        if found:
            return found
    first, last = data_range()
    if first is None or last is None:
        return "ts::TIMESTAMP"
    first, last = max(first, since or first), min(last, until - dt.timedelta(microseconds=1) if until else last)
    # An empty range: no call to convert, but the expression must still be valid SQL.
    return _offsets_sql(zone, first, max(first, last), buckets)


# Finding the offsets over two years takes ~5 ms (a step each 6 hours); over the years a since of
# 1900 and no until cover it would take seconds, where the data's range is one query.
OFFSETS_SPAN = dt.timedelta(days=800)


def _data_range(con: duckdb.DuckDBPyConnection) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The first and last instant any call (purged or not) can have: from the raw calls and the
    daily tier, which every call is summed into when it is written. Unfiltered, both are answered
    from the tables' statistics (2 ms at 100M calls)."""
    return one(con.execute(
        f"SELECT least((SELECT min(ts) FROM calls), (SELECT min(bucket) FROM {rollups.DAILY.table})), "
        f"greatest((SELECT max(ts) FROM calls), "
        f"(SELECT max(bucket) FROM {rollups.DAILY.table}) + INTERVAL {rollups.DAILY.seconds} SECOND)"))


def _offsets_sql(zone: zoneinfo.ZoneInfo, first: dt.datetime, last: dt.datetime, buckets: int | None) -> str:
    """_local_time_sql's expression for times from ``first`` to ``last`` (given ``buckets``, the
    start of the last bucket of that many seconds), or "" for buckets the offsets do not fit."""
    if buckets is not None:  # a bucket starting at ``last`` holds calls up to its end
        last = _later(last, dt.timedelta(seconds=buckets))
    periods = _offset_periods(zone, first, last)
    if buckets is not None and not _on_bucket_edges(periods, buckets):
        return ""
    if len(periods) == 1:
        offset = f"{periods[0][1]}"
    else:
        cases = " ".join(f"WHEN ts < '{start.isoformat()}'::TIMESTAMPTZ THEN {previous}"
                         for (start, _), (_, previous) in zip(periods[1:], periods[:-1]))
        offset = f"CASE {cases} ELSE {periods[-1][1]} END"
    return f"make_timestamp(epoch_us(ts) + ({offset}))"


def _on_bucket_edges(periods: list[tuple[dt.datetime, int]], seconds: int) -> bool:
    """Whether every offset is whole buckets and changes on a bucket edge: a local hour, day and
    month then start on bucket edges, and a bucket's calls all fall in its start's group."""
    width = dt.timedelta(seconds=seconds)
    return all(offset % (seconds * 1_000_000) == 0 for _, offset in periods) and \
        all(_bucket_floor(start, width) == start for start, _ in periods[1:])


def _later(at: dt.datetime, delta: dt.timedelta) -> dt.datetime:
    """``at`` + ``delta``, or the calendar's last instant when that is past it (9999-12-31)."""
    try:
        return at + delta
    except OverflowError:
        return dt.datetime.max.replace(tzinfo=dt.UTC)


def _offset_periods(zone: zoneinfo.ZoneInfo, first: dt.datetime, last: dt.datetime) -> list[tuple[dt.datetime, int]]:
    """(start, UTC offset in microseconds) for each period of constant offset between first and last."""
    def offset(at: dt.datetime) -> int:
        try:
            found = at.astimezone(zone).utcoffset()
        except OverflowError:  # ahead of UTC, the last hours of 9999 are local times in the year 10000
            found = zone.utcoffset(at.replace(tzinfo=None))
        return int((found or dt.timedelta(0)).total_seconds() * 1_000_000)

    periods = [(first, offset(first))]
    at = first
    while at < last:
        step = min(_later(at, dt.timedelta(hours=6)), last)
        if offset(step) != periods[-1][1]:
            low, high = at, step  # bisect to the second the offset changed
            while high - low > dt.timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if offset(middle) == periods[-1][1] else (low, middle)
            periods.append((high.replace(microsecond=0), offset(high)))
        at = step
    return periods


def _total(con: duckdb.DuckDBPyConnection, groups: list[dict], selection: Selection | None) -> dict:
    """Counts and sums add up from the groups; only the percentiles need another pass, over the
    raw calls of ``selection`` (skipped when None)."""
    total = {name: sum(g[name] for g in groups) for name in (*_COUNTS, *_TOKENS)}
    total["audio_seconds"] = _milliseconds(sum(g["audio_seconds"] for g in groups))
    costs = [g["cost_usd"] for g in groups if g["cost_usd"] is not None]
    # No cost known is "unpriced", but no call at all cost nothing: $0, not unknown.
    total["cost_usd"] = sum(costs) if costs else None if total["calls"] else Decimal(0)
    latency = added = None
    if selection is not None:
        # proxy_us is NULL on rows stored before it was measured: quantiles skip them, not count them as 0.
        condition, params = where(selection)
        latency, added = one(con.execute(*scan(selection, "SELECT quantile_cont(latency_ms, [0.5, 0.95]), "
                                               f"quantile_cont(proxy_us, {list(_PROXY_POINTS)}) FROM calls "
                                               f"WHERE {condition}", params)))
    return {**_group({**total, "latency_ms": latency}), **_added(added)}


def _milliseconds(seconds: float) -> float:
    """A sum of audio seconds in Python, to the millisecond they are stored with (DECIMAL(18, 3)):
    adding their floats leaves noise (0.1 + 0.2 = 0.30000000000000004) that the store's sum has not."""
    return round(seconds, 3)


def _added(quantiles) -> dict:
    p50, p99 = quantiles or (None, None)
    return {"p50_proxy_us": None if p50 is None else round(p50), "p99_proxy_us": None if p99 is None else round(p99)}


def _group(row: dict) -> dict:
    row["p50_latency_ms"], row["p95_latency_ms"] = _rounded(row.pop("latency_ms"))
    return row


def _rounded(quantiles) -> tuple:
    # Microseconds are the precision latencies are stored with; interpolation adds float noise.
    return tuple(None if q is None else round(q, 3) for q in quantiles or (None, None))


def _share(cost: Decimal | None, total: Decimal | None) -> float | None:
    if cost is None or not total:
        return None
    return float(cost / total)


def _quote(text: str) -> str:
    return text.replace("'", "''")
