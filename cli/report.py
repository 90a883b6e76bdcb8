"""``aispendtrack report``: spend grouped by model, customer, feature, key, team or time."""

from __future__ import annotations

import dataclasses

import click

from addon.core.money import column_places, usd
from addon.core.reports import DIMENSIONS, TIME_DIMENSIONS, ReportError, ReportSpec, parse_report
from addon.core.store import reading
from addon.core.store import reports as report_rows
from addon.core.store.calls import TOOL_NAMES
from addon.core.wording import percent, plural

from .options import selection_options
from .output import NO_TEAM, compact, emit, render_table, seconds, tokens

_NOT_CALLS = ("containers", "guardrail_checks")  # in TOOL_NAMES, but not a tool's calls
# A table shows the costliest groups, as the page's breakdowns do (web/static/app.js BREAKDOWN_ROWS):
# 100,000 customers are no table to read, and their percentiles are most of a report's time.
TABLE_ROWS = 50


@click.command()
@click.option("--by", "by", multiple=True, type=click.Choice(DIMENSIONS), default=("model",), show_default=True,
              help="Group by this dimension; give --by twice for two.")
@selection_options
@click.option("--format", "fmt", type=click.Choice(("table", "json", "csv")), default="table", show_default=True)
@click.option("--wide", is_flag=True, help="Table with every token kind (wider than 80 columns).")
@click.option("--exact", is_flag=True,
              help="Scan every raw call (exact percentiles, for audits) instead of the rollups (15-minute, "
                   "hourly, daily or weekly sums), whose p50/p95 are within 1% or of raw calls; purged calls are then "
                   "not counted.")
@click.option("--limit", type=click.IntRange(1, None), metavar="N",
              help=f"The first N groups: the N costliest, or the N earliest for a time grouping (their p50/p95 "
                   f"alone are computed; the TOTAL line is that of all groups). Default: the {TABLE_ROWS} costliest "
                   f"in a table without a time grouping, else all.")
@click.option("--all", "every", is_flag=True, help="Every group, in a table too.")
@click.pass_obj
def report(obj, by: tuple[str, ...], selection, fmt: str, wide: bool, exact: bool, limit: int | None,
           every: bool) -> None:
    """What was spent, on what, for whom: calls, tokens, cost, share and latency per group."""
    try:
        spec = parse_report(by)
    except ReportError as exc:
        raise click.UsageError(str(exc)) from None
    if every and limit is not None:
        raise click.UsageError("give --limit or --all, not both.")
    if limit is None and not every and fmt == "table" and not set(spec.by) & set(TIME_DIMENSIONS):
        limit = TABLE_ROWS
    spec = dataclasses.replace(spec, selection=selection)
    with reading(obj.db) as con:
        groups, total = report_rows.report(con, spec, total_latency=fmt == "table", exact=exact, limit=limit)
        unmetered = report_rows.unmetered_endpoints(con, selection) if total["unmetered_calls"] else []
    if fmt != "table":
        emit(groups, fmt, [])
        return
    click.echo(render(spec, groups, total, wide, unmetered))


def render(spec: ReportSpec, groups: report_rows.Groups, total: dict, wide: bool = False,
           unmetered: list[dict] | None = None) -> str:
    """The table; the default one fits 80 columns for a dimension up to ~25 characters wide.
    ``%`` is the share of the total cost. ``unmetered``: the endpoints of calls we do not meter.
    Groups a limit left out are summed on one line above the TOTAL."""
    rest = groups.rest
    names = [report_rows.dimension_name(d) for d in spec.by]
    number = tokens if wide else compact
    columns = [(name.upper().replace("_ID", ""), _cell(name), "<") for name in names]
    columns += [("CALLS", lambda r: number(r["calls"]), ">"), ("ERR", lambda r: number(r["errors"]), ">"),
                ("IN", lambda r: number(r["input_tokens"]), ">")]
    if wide:
        columns += [("CACHE READ", lambda r: number(r["cache_read_tokens"]), ">"),
                    ("CACHE WRITE", lambda r: number(r["cache_write_tokens"]), ">")]
    columns += [("OUT", lambda r: number(r["output_tokens"]), ">")]
    if wide:
        columns += [("REASONING", lambda r: number(r["reasoning_tokens"]), ">"),
                    ("IMAGES", lambda r: number(r["images"]), ">"),
                    ("AUDIO S", lambda r: f"{r['audio_seconds']:,.1f}", ">"),
                    ("CHARS", lambda r: number(r["characters"]), ">"),
                    # Server-side tool calls (searches, fetches, file searches, code runs, grounded
                    # prompts, images by a tool), the containers code ran in, and the calls a Bedrock
                    # guardrail checked; each count apart in --format json.
                    ("TOOL CALLS", lambda r: number(sum(r[t] for t in TOOL_NAMES if t not in _NOT_CALLS)), ">"),
                    ("CONTAINERS", lambda r: number(r["containers"]), ">"),
                    ("GUARDED", lambda r: number(r["guardrail_checks"]), ">")]
    places = column_places(r["cost_usd"] for r in [*groups, total, *([rest] if rest else [])])
    columns += [("COST", lambda r: _cost(r, places), ">"),
                ("%", lambda r: percent(r["share"]) if r["share"] is not None else "-", ">"),
                ("P50/P95", lambda r: f"{seconds(r['p50_latency_ms'])}/{seconds(r['p95_latency_ms'])}", ">")]
    totals_row = {**total, **{name: "TOTAL" if i == 0 else "" for i, name in enumerate(names)}}
    lines = render_table([*groups, totals_row], columns).splitlines()
    rule = "-" * max(len(line) for line in lines)
    if rest:
        lines.insert(len(lines) - 1, _left_out(spec, groups, rest, places))
    lines.insert(len(lines) - 1, rule)
    if total["unpriced_calls"]:
        more = plural(total["unpriced_calls"], "more call has", "more calls have")
        # Why (an unknown model, an answer without usage, an endpoint not metered): prices check says.
        lines.append(f"* {more} no price, see `aispendtrack prices check` for why.")
    for line in unmetered or ():
        lines.append(f"  {plural(line['calls'], 'call')} to {line['provider']} {line['endpoint']}: billed by the "
                     f"provider, not metered by AiSpendTrack (unpriced).")
    if not wide and (total["cache_read_tokens"] or total["cache_write_tokens"]):
        lines.append(f"IN excludes {compact(total['cache_read_tokens'])} cache-read, "
                     f"{compact(total['cache_write_tokens'])} cache-write tokens (--wide shows them).")
    return "\n".join(lines)


def _left_out(spec: ReportSpec, groups: report_rows.Groups, rest: dict, places: int) -> str:
    """``… 99,950 more customers: 1,234,567 calls, $1,234.56 (12%)``"""
    what = f"more {spec.by[0]}" if len(spec.by) == 1 else "more group"
    share = f" ({percent(rest['share'])})" if rest["share"] is not None else ""
    return (f"… {plural(groups.total_groups - len(groups), what)}: {plural(rest['calls'], 'call')}, "
            f"{_cost(rest, places)}{share}")


def _cell(name: str):
    if name == "team":  # the calls of keys in no team (and of no key)
        return lambda r: NO_TEAM if r[name] is None else str(r[name])
    if name == "key_id":  # the key's name (docs/api.md: key_name), its id only when it has none
        return lambda r: "-" if r[name] is None else str(r.get("key_name") or r[name])
    return lambda r: "-" if r[name] is None else str(r[name])


def _cost(row: dict, places: int) -> str:
    return usd(row["cost_usd"], places) + ("*" if row["unpriced_calls"] and row["cost_usd"] is not None else "")
