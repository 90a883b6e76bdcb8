"""``aispendtrack prices``: where prices come from, and which models we could not price."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
import zoneinfo

import click
from click_default_group import DefaultGroup

import pricing
from addon.core import audit, config_files, price_data
from addon.core.evaluate import UNPRICED_LOOKBACK
from addon.core.money import usd
from addon.core.reports import ReportError, Selection, parse_when
from addon.core.reprice import spend_by_model
from addon.core.store import calls as call_rows
from addon.core.store import price_snapshots as stored_prices
from addon.core.store import reading, writing
from addon.core.store import reports as report_rows
from addon.core.wording import plural, visible
from pricing import overrides
from pricing.patches import Compared
from pricing.patches import compare as compare_patches

from .imports import read_text, say_not_read
from .output import emit, format_option


@click.group(cls=DefaultGroup, default="check", default_if_no_args=True)
def prices() -> None:
    """Price data and unpriced models (default: check)."""


@prices.command()
@click.option("--since", "since_text", default="30d", show_default=True, metavar="DATE",
              help="List the calls without a price (by model, endpoint not metered, answer without usage) "
                   "since DATE (2026-11-01, 7d, ...).")
@format_option()
@click.pass_obj
def check(obj, since_text: str = "30d", fmt: str = "table") -> None:
    """Say which list prices are in use and how old they are, validate the override file, and list
    models seen in calls that have no price, billable endpoints the proxy forwards without metering
    them, and endpoints whose answers carried no usage it could read."""
    found = config_files.read(obj.home, config_files.PRICES)
    now = dt.datetime.now(dt.UTC)
    since = _since(since_text, now)
    try:
        book = config_files.price_book(obj.home)  # with the list-price data the proxy uses
        book.use_overrides(config_files.price_file(found))
    except pricing.PriceFileError as exc:
        raise click.ClickException(str(exc)) from None
    with reading(obj.db) as con:
        rows = call_rows.unpriced_models(con, since=since)
        every = report_rows.unpriced_endpoints(con, Selection(since=since), ("unmetered", *report_rows.USAGE_UNKNOWN),
                                               without_model=True)
        endpoints = [r for r in every if r["usage_source"] == "unmetered"]
        unknown = [r for r in every if r["usage_source"] != "unmetered"]
        latest = stored_prices.latest(con)
    for row in rows:
        row["priced_now"] = _priced_now(book, row)
    if fmt != "table":  # one list: a model's rows name its model, an endpoint's its endpoint and usage_source
        emit([*rows, *endpoints, *unknown], fmt, [])
        return
    entries = plural(len(book.overrides), "entry", "entries") if found.text is not None else "none"
    click.echo(price_data.describe(latest, now))
    click.echo(f"Your price overrides ({found.origin}): {entries}")
    say_not_read(obj.home)
    _show_patches(book.patches, now)
    _show_endpoints(endpoints, "went to endpoints the provider bills but AiSpendTrack does not meter (cost shown "
                               "as 'unpriced', never $0; docs/coverage.md)", "ENDPOINT (not metered)")
    _show_endpoints(unknown, "got an answer without usage AiSpendTrack could read, or naming no model (cost unknown, "
                             "shown as 'unpriced'; each call's reason in `aispendtrack calls`)", "ENDPOINT",
                    ("LATEST REASON", lambda r: visible(r["reason"], 100) if r["reason"] else "-", "<"))
    if not rows and not endpoints and not unknown:
        click.echo(f"Every call since {since:%Y-%m-%d %H:%M} UTC has a price.")
        return
    _show_unpriced([r for r in rows if not r["priced_now"]], _where_to_add(found))
    _show_repriceable([r for r in rows if r["priced_now"]])


def _priced_now(book: pricing.PriceBook, row: dict) -> bool:
    """Whether the prices in use now price this model (at its tier, as of its last call): its stored
    calls then only wait for `aispendtrack reprice`."""
    usage = pricing.TokenUsage(input_tokens=1, output_tokens=1)
    return book.price(usage, row["provider"], row["model"], row["last_seen"], row["service_tier"]).priced


def _show_unpriced(rows: list[dict], where: str) -> None:
    if not rows:
        return
    click.echo(f"\n{plural(sum(r['calls'] for r in rows), 'call')} used models (or service tiers) with no known price "
               f"(cost shown as 'unpriced', never $0). Add them to {where}:\n")
    emit(rows, "table", [
        ("PROVIDER", lambda r: r["provider"], "<"), ("MODEL", lambda r: r["model"], "<"),
        ("TIER", lambda r: r["service_tier"] or "standard", "<"), ("CALLS", lambda r: f"{r['calls']:,}", ">"),
        ("LAST SEEN (UTC)", lambda r: r["last_seen"].strftime("%Y-%m-%d %H:%M"), "<"),
    ])


def _show_repriceable(rows: list[dict]) -> None:
    """Models priced since their calls were stored (an override added, newer price data): the
    commands that store those calls' costs."""
    if not rows:
        return
    calls = sum(r["calls"] for r in rows)
    click.echo(f"\n{plural(calls, 'call stored as unpriced has', 'calls stored as unpriced have')} a price now; "
               f"store {'it' if calls == 1 else 'them'} with:")
    for provider, model in dict.fromkeys((r["provider"], r["model"]) for r in rows):
        click.echo("  " + shlex.join(["aispendtrack", "reprice", "--provider", provider, "--model", model]))


def _show_endpoints(endpoints: list[dict], what: str, title: str, *more: tuple) -> None:
    if not endpoints:
        return
    click.echo(f"\n{plural(sum(r['calls'] for r in endpoints), 'call')} {what}:\n")
    emit(endpoints, "table", [
        ("PROVIDER", lambda r: r["provider"], "<"), (title, lambda r: r["endpoint"], "<"),
        ("CALLS", lambda r: f"{r['calls']:,}", ">"),
        ("LAST SEEN (UTC)", lambda r: r["last_seen"].strftime("%Y-%m-%d %H:%M"), "<"), *more,
    ])


def _verdict(compared: Compared) -> str:
    if compared.verdict == "redundant":
        return f"redundant: {pricing.data_source()} has the same rates"
    if compared.list_usd is None:
        return f"still needed: {pricing.data_source()} has no price for {compared.model}"
    return (f"still needed: {pricing.data_source()} differs ({usd(compared.list_usd)} vs {usd(compared.patch_usd)} "
            f"for a million tokens of each kind and 1,000 searches)")


def _where_to_add(found: config_files.ConfigFile) -> str:
    if found.in_shared_store:
        return f"your prices.toml and `aispendtrack prices import` it ({found.origin})"
    return found.origin


@prices.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def import_file(obj, file: str) -> None:
    """Validate a prices.toml and make it the overrides every proxy prices with.

    Embedded: copied into the data directory (the proxy reloads it within a second). Shared mode:
    stored in the shared store for every replica, which each picks up within 2 s."""
    text = read_text(file)
    try:
        parsed = overrides.parse(text, file)
    except pricing.PriceFileError as exc:
        raise click.ClickException(str(exc)) from None
    stored = config_files.write(obj.home, config_files.PRICES, text)
    with writing(obj.db) as con:
        audit.record(con, "prices.import", "config:prices.toml", None, {"entries": len(parsed), "text": text})
    click.echo(f"Price overrides: {plural(len(parsed), 'entry', 'entries')} from {file}, now in {stored.origin}; "
               f"{'every proxy prices with them within 2 s' if stored.in_shared_store else 'the proxy reloads it'}.")


def _show_patches(patches: pricing.PriceFile, now: dt.datetime) -> None:
    """The bundled corrections to genai-prices, each with where its rates are published and whether
    the list data in use still needs it (a patch it has since absorbed is redundant)."""
    click.echo(f"Bundled corrections ({pricing.PATCH_FILE.name}, applied under your overrides): {len(patches)}")
    verdicts = {id(c.entry): c for c in compare_patches(patches, now)}
    for entry in patches.prices:
        since = f" from {entry.since:%Y-%m-%d %H:%M} UTC" if entry.since else ""
        tiers = f", {len(entry.tiers)} long-context tier(s)" if entry.tiers else ""
        compared = verdicts.get(id(entry))
        verdict = f" [{_verdict(compared)}]" if compared else ""
        click.echo(f"  {entry.provider}/{' '.join(entry.models)}{since}{tiers}: {entry.cited}{verdict}")
    for tier in patches.multipliers:
        click.echo(f"  {tier.provider} {tier.name} tier: x{tier.multiplier} of standard: {tier.cited}")
    for fee in patches.container_fees:
        click.echo(f"  {fee.provider} containers: estimated at {fee.minutes} minutes of ${fee.usd_per_hour}/hour "
                   f"each: {fee.cited}")
    for image in patches.images:
        quality = f" {image.quality}" if image.quality != "standard" else ""
        click.echo(f"  {image.provider}/{' '.join(image.models)} {'/'.join(image.sizes)}{quality}: "
                   f"${image.usd_per_image} an image: {image.cited}")


@prices.command()
@click.option("--since", "since_text", required=True, metavar="DATE",
              help="From the list prices in use then: 2026-11-01, 30d, ...")
@format_option()
@click.pass_obj
def diff(obj, since_text: str, fmt: str = "table") -> None:
    """What changed in the list prices since DATE, for the models of the last 30 days' calls: their
    spend by the data in use then and by the data in use now."""
    now = dt.datetime.now(dt.UTC)
    since = _since(since_text, now)
    try:
        book = config_files.price_book(obj.home)
    except pricing.PriceFileError as exc:
        raise click.ClickException(str(exc)) from None
    with reading(obj.db) as con:
        versions = price_data.versions_since(con, since)
        if len(versions) < 2:
            click.echo(f"The list prices have not changed since {since:%Y-%m-%d %H:%M} UTC "
                       f"({pricing.data_source()} in use).")
            return
        rows = report_rows.reprice_inputs(con, Selection(since=now - UNPRICED_LOOKBACK))
        spend = spend_by_model(rows, book, versions[0], versions[-1])
    changed = [{"provider": p, "model": m, **dataclasses.asdict(s)} for (p, m), s in sorted(spend.items()) if s.changed]
    if fmt != "table":
        emit(changed, fmt, [])
        return
    click.echo(f"List prices since {since:%Y-%m-%d %H:%M} UTC: "
               + " -> ".join(f"{v.id} ({v.fetched_at:%Y-%m-%d %H:%M})" for v in versions))
    if not changed:
        click.echo(f"No model of the last {UNPRICED_LOOKBACK.days} days' calls costs differently.")
        return
    click.echo(f"Models of the last {UNPRICED_LOOKBACK.days} days' calls that cost differently, "
               f"{versions[0].id} -> {versions[-1].id}:\n")
    emit(changed, "table", [
        ("PROVIDER", lambda r: r["provider"], "<"), ("MODEL", lambda r: r["model"], "<"),
        ("CALLS", lambda r: f"{r['calls']:,}", ">"),
        ("BEFORE", lambda r: _spent(r["before"], r["unpriced_before"]), ">"),
        ("AFTER", lambda r: _spent(r["after"], r["unpriced_after"]), ">"),
        ("CHANGE", lambda r: _signed(r["after"] - r["before"]), ">"),
    ])


def _since(text: str, now: dt.datetime) -> dt.datetime:
    try:
        return parse_when(text, zoneinfo.ZoneInfo("UTC"), now, "--since")
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None


def _spent(amount, unpriced: int) -> str:
    return usd(amount) + (f" + {unpriced:,} unpriced" if unpriced else "")


def _signed(amount) -> str:
    return ("+" if amount >= 0 else "-") + usd(abs(amount))
