"""``aispendtrack keys``: create, list and revoke AiSpendTrack keys."""

from __future__ import annotations

import datetime as dt

import click
from click_default_group import DefaultGroup

from addon.core import audit, config
from addon.core import keys as keygen
from addon.core.periods import hour_start, month_start
from addon.core.plans import DEFAULT_PLAN, LIMIT_MAX, PLANS, limits_for, retention_days_for
from addon.core.serialize import dumps
from addon.core.store import atomic, reading, writing
from addon.core.store import calls as call_rows
from addon.core.store import keys as key_rows

from .output import emit, format_option, limit_said, printable_name


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def keys() -> None:
    """Manage the keys callers send in x-aispendtrack-key (default: list)."""


@keys.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. backend or staging.")
@click.option("--plan", type=click.Choice(list(PLANS)), default=DEFAULT_PLAN, show_default=True,
              help="free: 1,000/hour and 10,000/month; pro: 10,000/hour; enterprise: no limits.")
@click.option("--team", help="Put the key in this team (see `aispendtrack teams`).")
@click.option("--json", "as_json", is_flag=True, help="Print {key, id, name} as JSON.")
@click.pass_obj
def create(obj, name: str, plan: str, team: str | None, as_json: bool) -> None:
    """Create a key. It is printed once and stored only as a hash."""
    name = printable_name(name, "a key's name", "--name")
    try:
        key_id, key = keygen.create(obj.db, name, plan, team)
    except LookupError:
        raise click.BadParameter(f"no team named {team!r}; create it with `aispendtrack teams create`.",
                                 param_hint="--team") from None
    if as_json:
        click.echo(dumps({"key": key, "id": key_id, "name": name}))
        return
    click.echo(f"Created key {key_id} ({name}{', team ' + team if team else ''}):\n\n    {key}\n")
    click.echo("Store it now: it is shown only once. Callers send it as the x-aispendtrack-key header.")


@keys.command("list")
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
def list_keys(obj, fmt: str = "table", as_json: bool = False) -> None:
    """List keys (never the keys themselves: only their first characters)."""
    now = dt.datetime.now(dt.UTC)
    with reading(obj.db) as con:
        rows = key_rows.all_keys(con)
        zone = config.quota_zone(con)
        used = call_rows.counts_since(con, hour_start(now), month_start(now, zone))
    for row in rows:
        row["status"] = "revoked" if row["revoked_at"] else "active"
        limits = limits_for(row["plan"], row["per_hour_limit"], row["per_month_limit"])
        row["limit_per_hour"], row["limit_per_month"] = limits.per_hour, limits.per_month
        row["used_this_hour"], row["used_this_month"] = used.get(row["id"], (0, 0))
    emit(rows, "json" if as_json else fmt, [
        ("ID", lambda r: str(r["id"]), ">"), ("NAME", lambda r: r["name"], "<"),
        ("KEY", lambda r: r["prefix"] + "…", "<"), ("STATUS", lambda r: r["status"], "<"),
        ("PLAN", lambda r: r["plan"], "<"), ("TEAM", lambda r: r["team"] or "-", "<"),
        ("HOUR", lambda r: _usage(r["used_this_hour"], r["limit_per_hour"]), ">"),
        (f"MONTH ({zone.key})", lambda r: _usage(r["used_this_month"], r["limit_per_month"]), ">"),
        ("KEEP", lambda r: _retention(r), ">"),
        ("CREATED", lambda r: r["created_at"].strftime("%Y-%m-%d"), "<"),
    ])


def _retention(row: dict) -> str:
    days = retention_days_for(row["plan"], row["retention_days"])
    return f"{days}d" if days is not None else "always"


def _usage(used: int, limit: int | None) -> str:
    return f"{used:,}/{limit:,}" if limit is not None else f"{used:,}"


@keys.command("set-plan")
@click.argument("key_id", type=int)
@click.argument("plan", type=click.Choice(list(PLANS)))
@click.pass_obj
def set_plan(obj, key_id: int, plan: str) -> None:
    """Put a key on a plan; a running proxy applies it within ~2 seconds."""
    with writing(obj.db) as con:
        before = _existing(con, key_id)
        key_rows.set_plan(con, key_id, plan)
        audit.record(con, "keys.set-plan", f"key:{key_id}", {"plan": before["plan"]}, {"plan": plan})
    click.echo(f"Key {key_id} is on the {plan} plan.")


def _existing(con, key_id: int) -> dict:
    found = key_rows.get(con, key_id)
    if found is None:
        raise click.ClickException(f"No key with id {key_id}; see `aispendtrack keys list`.")
    return found


def _limits(key: dict) -> dict:
    return {"per_hour_limit": key["per_hour_limit"], "per_month_limit": key["per_month_limit"]}


@keys.command("move")
@click.argument("key_id", type=int)
@click.option("--team", help="The team to put the key in.")
@click.option("--no-team", is_flag=True, help="Take the key out of any team.")
@click.pass_obj
def move(obj, key_id: int, team: str | None, no_team: bool) -> None:
    """Put a key in another team, or in none; its past calls report under its new team too."""
    from addon.core.store import teams as team_rows

    from .teams import existing, moved_keys
    if (team is None) != no_team:
        raise click.UsageError("give --team NAME or --no-team.")
    with writing(obj.db) as con:
        team_id = None if team is None else existing(con, team, "--team")
        before = team_rows.names_of_keys(con).get(key_id)
        with atomic(con):  # the key's team and its entry: together or not at all
            if not team_rows.move_key(con, key_id, team_id):
                raise click.ClickException(f"No key with id {key_id}; see `aispendtrack keys list`.")
            audit.record(con, "keys.move", f"key:{key_id}", {"team": before}, {"team": team})
        # After the commit: in the shared mode the recount reads the keys' teams through the lake's
        # own PostgreSQL session, which sees only what is committed.
        moved_keys(con, [before, team])
    click.echo(f"Key {key_id} is in " + (f"team {team}" if team else "no team") + "; its past calls report there too.")


@keys.command("set-limit")
@click.argument("key_id", type=int)
@click.option("--per-hour", type=click.IntRange(1, LIMIT_MAX), help="Requests per clock hour.")
@click.option("--per-month", type=click.IntRange(1, LIMIT_MAX), help="Calls per calendar month.")
@click.option("--reset", is_flag=True, help="Go back to the plan's limits.")
@click.pass_obj
def set_limit(obj, key_id: int, per_hour: int | None, per_month: int | None, reset: bool) -> None:
    """Give a key its own limits instead of its plan's (the ones not given go back to the plan's)."""
    if reset == bool(per_hour or per_month):
        raise click.UsageError("give --per-hour and/or --per-month, or --reset.")
    with writing(obj.db) as con:
        before = _existing(con, key_id)
        key_rows.set_limits(con, key_id, per_hour, per_month)
        audit.record(con, "keys.set-limit", f"key:{key_id}", _limits(before),
                     {"per_hour_limit": per_hour, "per_month_limit": per_month})
    plan = PLANS.get(before["plan"], PLANS[DEFAULT_PLAN])
    click.echo(f"Key {key_id}: " + ", ".join(
        limit_said(given, before[f"per_{period}_limit"], period,
                   f"per {period} as its plan says ({'no limit' if of_plan is None else f'{of_plan:,}'})")
        for given, of_plan, period in ((per_hour, plan.per_hour, "hour"), (per_month, plan.per_month, "month"))) + ".")


@keys.command("set-retention")
@click.argument("key_id", type=int)
@click.option("--days", type=click.IntRange(1), help="Keep this key's raw calls this many days.")
@click.option("--plan", "use_plan", is_flag=True, help="Go back to the plan's retention.")
@click.pass_obj
def set_retention(obj, key_id: int, days: int | None, use_plan: bool) -> None:
    """Keep a key's raw calls for its own number of days (e.g. a custom enterprise contract)."""
    if use_plan == (days is not None):
        raise click.UsageError("give --days N or --plan.")
    with writing(obj.db) as con:
        before = _existing(con, key_id)
        key_rows.set_retention(con, key_id, days)
        audit.record(con, "keys.set-retention", f"key:{key_id}", {"retention_days": before["retention_days"]},
                     {"retention_days": days})
    click.echo(f"Key {key_id}: raw calls kept " + (f"{days} days." if days else "as its plan says."))


@keys.command("revoke")
@click.argument("key_id", type=int)
@click.pass_obj
def revoke(obj, key_id: int) -> None:
    """Revoke a key; a running proxy refuses it within ~2 seconds."""
    with writing(obj.db) as con:
        revoked = key_rows.revoke(con, key_id)
        if revoked is not None and revoked[1]:
            audit.record(con, "keys.revoke", f"key:{key_id}", {"revoked_at": None}, {"revoked_at": revoked[0]})
    if revoked is None:
        raise click.ClickException(f"No key with id {key_id}; see `aispendtrack keys list`.")
    revoked_at, now = revoked
    if not now:
        raise click.ClickException(f"Key {key_id} was already revoked (at {revoked_at:%Y-%m-%d %H:%M:%S %Z}); "
                                   "nothing changed.")
    click.echo(f"Revoked key {key_id} (at {revoked_at:%Y-%m-%d %H:%M:%S %Z}).")
