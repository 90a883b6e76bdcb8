"""``aispendtrack purge`` and ``aispendtrack gdpr``: retention and data subject requests."""

from __future__ import annotations

import datetime as dt
import sys

import click

from addon.core import gdpr as subject_requests
from addon.core import home as home_dir
from addon.core import retention
from addon.core.reports import parse_duration
from addon.core.serialize import dumps
from addon.core.store.subjects import Subject, subject_from
from addon.core.wording import plural

from .output import out_option, written_whole
from .progress import quiet_option, running


def _duration(value: str | None) -> dt.timedelta | None:
    if value is None:
        return None
    duration = parse_duration(value)
    if duration is None:  # (0d is a duration: check_older_than says why it cannot be one)
        raise click.BadParameter(f"{value!r}: give a number and a unit, e.g. 30d, 12h or 2w.")
    try:
        return retention.check_older_than(duration)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


@click.command()
@click.option("--older-than", help="Also purge calls older than this for every key, e.g. 30d (plans still apply).")
@click.option("--dry-run", is_flag=True, help="Only count what would be purged.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@quiet_option
@click.pass_obj
def purge(obj, older_than: str | None, dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Delete raw calls past their key's retention (the proxy also does this daily).

    Purged calls stay counted in the rollups (15-minute totals), so reports, budgets, quotas and
    spike alerts are unchanged."""
    span = _duration(older_than)
    with running("Counting expired calls" if dry_run else "Purging", quiet):
        result = retention.purge(obj.db, dt.datetime.now(dt.UTC), span, dry_run)
    expired = sum(result.expired.values())
    if as_json:
        click.echo(dumps({"dry_run": dry_run, "expired_calls": expired, "deleted": result.deleted,
                          "cutoffs": {str(k): v.isoformat() for k, v in result.cutoffs.items()},
                          "keys": [_json_key(key, result) for key in result.keys]}))
        return
    for key in result.keys:
        click.echo(_goes(f"key {key.key_id} ({key.name})", result, key.key_id, _why(key, span, older_than)))
    if None in result.cutoffs:
        click.echo(_goes("calls without a key", result, None, f"--older-than {older_than}"))
    if dry_run:
        click.echo(f"Would purge {plural(expired, 'call')} (dry run: nothing deleted).")
    else:
        d = result.deleted
        assert d is not None  # set unless a dry run
        click.echo(f"Purged {plural(d['calls'], 'call')} (kept in the rollups); dropped "
                   f"{plural(d['hourly_rows'], 'rollup row')} and {plural(d['alerts'], 'alert')} "
                   f"older than 400 days.")
        if d["batches"]:
            click.echo(f"{plural(d['batches'], 'batch', 'batches')} past retention no longer name the key, "
                       f"customer and feature that created them.")


def _json_key(key: retention.KeyRetention, result: retention.PurgeResult) -> dict:
    cutoff = result.cutoffs.get(key.key_id)
    return {"key_id": key.key_id, "name": key.name, "plan": key.plan, "retention_days": key.days,
            "retention_set_by": "key" if key.own else "plan", "cutoff": cutoff.isoformat() if cutoff else None,
            "expired_calls": result.expired.get(key.key_id, 0)}


def _goes(who: str, result: retention.PurgeResult, key_id: int | None, why: str) -> str:
    """One key's line: what goes (or nothing) and why."""
    cutoff = result.cutoffs.get(key_id)
    if cutoff is None:
        return f"  {who}: nothing: {why}"
    return f"  {who}: {plural(result.expired.get(key_id, 0), 'call')} before {cutoff:%Y-%m-%d %H:%M} UTC: {why}"


def _why(key: retention.KeyRetention, span: dt.timedelta | None, older_than: str | None) -> str:
    """Which rule sets the key's cutoff: its retention (plan or own), or --older-than when shorter."""
    whose = "its own retention" if key.own else f"its {key.plan} plan"
    kept = f"{whose} keeps {plural(key.days, 'day')}" if key.days is not None else f"{whose} keeps calls forever"
    if span is None:
        return kept
    days = dt.timedelta(days=key.days) if key.days is not None else None
    if days is not None and days < span:
        return f"{kept}, less than --older-than {older_than}"
    if days == span:
        return f"{kept}, as does --older-than {older_than}"
    return f"--older-than {older_than} ({kept})"


@click.group()
def gdpr() -> None:
    """Export or erase everything stored about one customer or one key."""


def _subject(customer: str | None, key: int | None) -> Subject:
    try:
        return subject_from(customer, key)
    except ValueError as exc:
        raise click.UsageError(str(exc).replace("customer=ID or key=ID", "--customer ID or --key ID")) from None


def _counted(count: int, name: str) -> str:
    """An export's count by its name, plural (batches, pending_calls) or singular (key)."""
    things = name.replace("_", " ")
    if not things.endswith("s"):
        return plural(count, things)
    return plural(count, things[:-2] if things.endswith("ches") else things[:-1], things)


@gdpr.command("export")
@click.option("--customer", help="The x-customer-id value.")
@click.option("--key", type=int, help="The key id (see `aispendtrack keys list`).")
@out_option("Write to this file instead of stdout.")
@click.pass_obj
def export(obj, customer: str | None, key: int | None, out: str | None) -> None:
    """Everything stored about the subject, as one JSON document."""
    subject = _subject(customer, key)
    spill = obj.home / home_dir.SPILL_DIR
    with written_whole(out):
        if out is None:
            counts = subject_requests.export(obj.db, spill, subject, sys.stdout)
            sys.stdout.flush()  # here, where a failure is still ours to report
        else:
            with open(out, "w", encoding="utf-8") as f:
                counts = subject_requests.export(obj.db, spill, subject, f)
    if out is not None:
        click.echo(f"Wrote {out}: " + ", ".join(_counted(n, name) for name, n in counts.items()), err=True)
    if not any(counts.values()):
        click.echo(f"Nothing is stored about {subject.label()}.", err=True)
    if counts["unreadable_spill_files"]:
        raise click.ClickException(f"Could not read {plural(counts['unreadable_spill_files'], 'spill file')} under "
                                   f"{spill}: what they hold is not in the export; see the log.")


def _reclaimed(counts: dict) -> str:
    if "lake_files" in counts:
        return (f"Lake files with deleted rows rewritten and old snapshots expired ({counts['lake_files']:,} data "
                f"files left). Calls the replicas have not written yet are checked against this erase when they "
                f"land.")
    return (f"Database rewritten ({counts['bytes_before']:,} -> {counts['bytes_after']:,} bytes). Calls a running "
            f"proxy has not written yet are checked against this erase when they land.")


@gdpr.command("delete")
@click.option("--customer", help="The x-customer-id value.")
@click.option("--key", type=int, help="The key id; the key itself is deleted too.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@quiet_option
@click.pass_obj
def delete(obj, customer: str | None, key: int | None, yes: bool, quiet: bool) -> None:
    """Erase the subject everywhere and rewrite the database so its values are gone from disk."""
    subject = _subject(customer, key)
    if not yes:
        click.confirm(f"Erase everything stored about {subject.label()}? This cannot be undone", abort=True)
    with running(f"Erasing {subject.label()}", quiet):
        counts = subject_requests.erase(obj.db, obj.home / home_dir.SPILL_DIR, subject)
    erased = {"calls", "rollups", "budgets", "alerts", "pending_calls", "keys", "batches"}
    if not any(n for name, n in counts.items() if name in erased):  # "Erased ...: 0 calls" read as a contradiction
        click.echo(f"Nothing was stored about {subject.label()} (ids match exactly, case included). "
                   f"{_reclaimed(counts)}")
    else:
        click.echo(f"Erased {subject.label()}: {plural(counts['calls'], 'call')}, "
                   f"{plural(counts['rollups'], 'rollup row')}, {plural(counts['budgets'], 'budget')}, "
                   f"{plural(counts['alerts'], 'alert')}, {plural(counts['pending_calls'], 'pending call')}"
                   + (", the key" if counts.get("keys") else "") + ". " + _reclaimed(counts))
    if counts["unreadable_spill_files"]:  # whichever was said: they may hold the subject
        raise click.ClickException(f"Could not read {plural(counts['unreadable_spill_files'], 'spill file')} under "
                                   f"{obj.home / home_dir.SPILL_DIR}: they may still hold "
                                   f"{subject.label()}; see the log and remove them by hand.")
