"""``aispendtrack reconcile``: our rows beside the provider's own usage report."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from decimal import Decimal

import click

from addon.core import config_files
from addon.core import reconcile as rec
from addon.core.money import usd
from addon.core.reconcile import line_items
from addon.core.reconcile.check import DAY, check
from addon.core.reports import ReportError, parse_selection
from addon.core.store import reading, usage_totals
from pricing import PriceFileError

from .output import emit, format_option, tokens


@click.command()
@click.option("--provider", type=click.Choice(sorted(rec.PROVIDERS)), required=True)
@click.option("--since", default="30d", show_default=True, help="Start (UTC): 30d, 2026-11-01, ...")
@click.option("--until", help="End, exclusive (UTC); default: now.")
@click.option("--by", "by", multiple=True,
              type=click.Choice(("day", "hour", "model", "api-key", "project", "line-item")),
              help="Lines per day or hour (UTC), model, provider API key (with its project or workspace) or "
                   "project, in any combination [default: day and model]; or line-item alone: the provider's "
                   "billed line items beside ours, per kind of spend.")
@click.option("--tolerance", default=0.0, show_default=True, type=click.FloatRange(0, 100),
              help="Percent by which a token count may differ and still match.")
@click.option("--upstream", metavar="URL", help="The provider's API base URL, for an egress proxy or a stand-in "
                                                "[default: the provider's own].")
@format_option()
@click.pass_obj
def reconcile(obj, provider: str, since: str, until: str | None, by: tuple[str, ...], tolerance: float,
              upstream: str | None, fmt: str = "table") -> None:
    """Compare our rows with the provider's usage API, per UTC day (or hour) and model, or per
    provider API key and project, which names the key that went around the proxy.

    Needs an organization admin key in OPENAI_ADMIN_KEY or ANTHROPIC_ADMIN_KEY (never stored).
    Each line says match, untracked (the provider saw more: calls around the proxy), over (we
    recorded more) or drift (token kinds disagree both ways); days younger than 24 h may still
    change at the provider. --by line-item puts the provider's billed line items beside ours per
    kind of spend; fine-tuning training and storage are "not visible to a proxy", not a gap."""
    api = rec.PROVIDERS[provider]
    admin_key = rec.admin_key(api)
    if admin_key is None:
        raise click.UsageError(f"Set {api.KEY_VARIABLE} to an organization admin key of {api.NAME}: the usage API "
                               f"does not take ordinary API keys.")
    start, end = _range(since, until)
    by = _checked(by)
    with _warnings_shown(), rec.bounded():  # every request of the report within one deadline
        if by == ("line-item",):
            _line_items(obj, provider, api, admin_key, start, end, tolerance, upstream, fmt)
        else:
            _report(obj, provider, api, admin_key, start, end, by, tolerance, upstream, fmt)


def _checked(by: tuple[str, ...]) -> tuple[str, ...]:
    by = tuple(dict.fromkeys(by)) or ("day", "model")
    if "day" in by and "hour" in by:
        raise click.UsageError("--by day and --by hour exclude each other: lines are per day or per hour.")
    if "line-item" in by and len(by) > 1:
        raise click.UsageError("--by line-item stands alone: the cost APIs bill per day and line item, not per "
                               "model, key or hour.")
    return by


def _report(obj, provider: str, api, admin_key: str, start: dt.datetime, end: dt.datetime, by: tuple[str, ...],
            tolerance: float, upstream: str | None, fmt: str) -> None:
    width, by_key = ("1h" if "hour" in by else "1d"), bool({"api-key", "project"} & set(by))
    try:
        book = config_files.price_book(obj.home)
        lines = check(obj.db, book, provider, upstream or api.DEFAULT_BASE_URL, admin_key, start, end,
                      dt.datetime.now(dt.UTC), tolerance / 100, width, by_key)
    except (PriceFileError, rec.ReconcileError) as exc:
        raise click.ClickException(str(exc)) from None
    lines = rec.regroup(lines, by, tolerance / 100)
    summary = rec.total(lines)
    if hasattr(api, "fetch_costs"):  # what the provider billed, where it says
        try:
            billed = api.fetch_costs(upstream or api.DEFAULT_BASE_URL, admin_key, start, end)
        except rec.ReconcileError as exc:
            raise click.ClickException(str(exc)) from None
        per_day = by == ("day",)  # a day's bill has every model in it: shown on day lines only
        for line in lines:
            line["billed_usd"] = billed.get(line["bucket"], Decimal(0)) if per_day else None
        summary["billed_usd"] = sum(billed.values(), Decimal(0))
    if fmt != "table":
        emit([*lines, summary], fmt, [])
        return
    units = [unit for unit in rec.UNITS if summary[f"ours_{unit}"] or summary[f"theirs_{unit}"]]
    emit([*lines, summary], fmt, _columns(by, summary["theirs_requests"] is not None, units))
    click.echo(_verdict(summary, rec.unpriced(lines), api.NAME) + (_keys_named(lines) if by_key else ""))


def _line_items(obj, provider: str, api, admin_key: str, start: dt.datetime, end: dt.datetime, tolerance: float,
                upstream: str | None, fmt: str) -> None:
    try:
        billed = api.fetch_line_items(upstream or api.DEFAULT_BASE_URL, admin_key, start, end)
    except rec.ReconcileError as exc:
        raise click.ClickException(str(exc)) from None
    with reading(obj.db) as con:
        ours = usage_totals.per_endpoint(con, provider, start, end)
    try:
        line_items.price_tools(ours, config_files.price_book(obj.home), provider, end)
    except PriceFileError as exc:
        raise click.ClickException(str(exc)) from None
    lines = line_items.compare(billed, ours, tolerance / 100)
    emit([*lines, line_items.total(lines)], fmt, [
        ("KIND", lambda r: r["kind"], "<"), ("LINE ITEMS (provider)", lambda r: r["line_items"], "<"),
        ("CALLS ours", lambda r: tokens(r["ours_calls"]), ">"),
        ("COST ours/billed", lambda r: f"{usd(r['ours_cost_usd'])}/{usd(r['billed_usd'])}", ">"),
        ("MISSING", lambda r: usd(r["difference_usd"]) if r["visible"] is not False else "", ">"),
        ("STATUS", lambda r: r["status"], "<")])
    if fmt == "table":
        click.echo(_line_items_verdict(lines, api.NAME))


def _line_items_verdict(lines: list[dict], name: str) -> str:
    missing = [f"{line['kind']} {usd(line['difference_usd'])}" for line in lines if line["status"] == "untracked"]
    unseen = [f"{line['kind']} {usd(line['billed_usd'])}" for line in lines if not line["visible"]]
    text = (f"{name} billed more than the proxy recorded for: {', '.join(missing)}." if missing
            else f"Every kind of spend a proxy can see matches what {name} billed.")
    if unseen:
        text += f" Not visible to a proxy, so no gap: {', '.join(unseen)}."
    return text


class _Echo(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"Note: {record.getMessage()}", err=True)


@contextlib.contextmanager
def _warnings_shown():
    """What the provider modules warn of (a fallback to another API) reaches the terminal, once."""
    logger, handler = logging.getLogger(rec.__name__), _Echo(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _range(since: str, until: str | None) -> tuple[dt.datetime, dt.datetime]:
    """Whole UTC days: the usage APIs bucket by UTC day."""
    try:
        selection = parse_selection(since=since, until=until)
    except ReportError as exc:
        raise click.UsageError(str(exc)) from None
    now = dt.datetime.now(dt.UTC)
    start = (selection.since or now - 30 * DAY).astimezone(dt.UTC)
    end = (selection.until or now).astimezone(dt.UTC)
    start = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if end.time() != dt.time(0):
        end = end.replace(hour=0, minute=0, second=0, microsecond=0) + DAY
    return start, end


def _pair(name: str):
    def cell(row: dict) -> str:
        ours, theirs = row[f"ours_{name}"], row[f"theirs_{name}"]
        return f"{'-' if ours is None else tokens(ours)}/{'-' if theirs is None else tokens(theirs)}"
    return cell


_UNIT_HEADINGS = {"images": "IMG", "audio_seconds": "AUDIO S", "characters": "CHARS"}


def _columns(by: tuple[str, ...], counts_requests: bool, units: list[str]) -> list:
    """``units``: the units (rec.UNITS) either side counted, each a column of its own."""
    columns: list = []
    if "day" in by:
        columns.append(("DAY (UTC)", lambda r: f"{r['bucket']:%Y-%m-%d}" if r["bucket"] else "TOTAL", "<"))
    if "hour" in by:
        columns.append(("HOUR (UTC)", lambda r: f"{r['bucket']:%Y-%m-%d %H:00}" if r["bucket"] else "TOTAL", "<"))
    first = "day" in by or "hour" in by  # the total line is named once, in the first column
    if "model" in by:
        columns.append(("MODEL", lambda r: "" if r["model"] == "TOTAL" and first else r["model"] or "", "<"))
        first = True
    if "api-key" in by:
        columns.append(("API KEY (provider)", lambda r, first=first: _key_cell(r, "api_key_id", first), "<"))
        first = True
    if "api-key" in by or "project" in by:
        columns.append(("PROJECT", lambda r, first=first: _key_cell(r, "project", first), "<"))
    if counts_requests:
        columns.append(("REQ ours/theirs", _pair("requests"), ">"))
    columns += [("IN", _pair("input_tokens"), ">"), ("CACHE R", _pair("cache_read_tokens"), ">"),
                ("CACHE W", _pair("cache_write_tokens"), ">"), ("OUT", _pair("output_tokens"), ">"),
                *[(_UNIT_HEADINGS[unit], _pair(unit), ">") for unit in units],
                ("COST ours/theirs", lambda r: f"{usd(r['ours_cost_usd'])}/{usd(r['theirs_cost_usd'])}", ">"),
                ("STATUS", lambda r: r["status"] + (" (pending)" if r["pending"] else ""), "<")]
    return columns


NO_KEY = "(no provider key)"  # ours that no provider key's usage adds up to (keys.py)


def _key_cell(row: dict, name: str, after_first: bool) -> str:
    if row["model"] == "TOTAL":
        return "" if after_first else "TOTAL"
    return row.get(name) or (NO_KEY if name == "api_key_id" else "")


def _keys_named(lines: list[dict]) -> str:
    """The provider keys with spend the proxy did not see, largest first."""
    gaps: dict[str, Decimal] = {}
    for line in lines:
        if line.get("api_key_id") and line["status"] in ("untracked", "drift") and line["difference_usd"] > 0:
            name = f"{line['api_key_id']}" + (f" ({line['project']})" if line.get("project") else "")
            gaps[name] = gaps.get(name, Decimal(0)) + line["difference_usd"]
    if not gaps:
        return ""
    named = ", ".join(f"{name} {usd(value)}" for name, value in sorted(gaps.items(), key=lambda kv: -kv[1]))
    return f" Around the proxy, by the provider's key: {named}."


def _verdict(summary: dict, unpriced: list[str], name: str) -> str:
    """``unpriced``: the models whose differing usage has no price (rec.unpriced)."""
    difference, percent = summary["difference_usd"], summary["difference_percent"]
    if summary["status"] == "match":
        text = f"Everything {name} reports matches what the proxy recorded."
    elif difference == 0 and unpriced:
        text = f"{name}'s usage and the proxy's differ only for models with no price here."
    elif difference >= 0:
        text = (f"{name} reports {usd(difference)} more than the proxy recorded"
                + (f" ({percent:.1f}% of its total)" if percent is not None else "") + ": calls that went around "
                "the proxy, or a key it does not know.")
    else:
        text = f"The proxy recorded {usd(-difference)} more than {name} reports."
    if unpriced:
        text += (f" The usage of {', '.join(unpriced)} has no price here, so it is in no dollar figure: see its "
                 f"lines' tokens (add the model to prices.toml to price it).")
    if summary.get("billed_usd") is not None:
        text += (f" Its cost report says {usd(summary['billed_usd'])} was billed for these days, every line item "
                 f"included (fine-tuning, tools and calls that never passed a proxy too).")
    if summary["pending"]:
        text += " Days younger than 24 h may still change at the provider."
    return text
