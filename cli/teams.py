"""``aispendtrack teams``: create, list, rename and delete teams of keys, and limit their calls.

A key is in at most one team (`keys create --team`, `keys move`). Reports find a call's team
through its key when they read, so moving a key moves its past calls to its new team too."""

from __future__ import annotations

import datetime as dt

import click
from click_default_group import DefaultGroup

from addon.core import audit
from addon.core.budgets import respend_teams
from addon.core.plans import LIMIT_MAX
from addon.core.store import atomic, reading, writing
from addon.core.store import budgets as budget_rows
from addon.core.store import teams as team_rows
from addon.core.wording import plural

from .output import NO_TEAM, emit, format_option, limit_said, printable_name


def team_name(value: str, hint: str = "NAME") -> str:
    """A team's name as given, trimmed; an empty, overlong or unprintable one is an error, and so is
    the name tables give the keys in no team (a team of that name read as none in them)."""
    name = printable_name(value, "a team's name", hint)
    if name == NO_TEAM:
        raise click.BadParameter(f"{NO_TEAM} is how reports name the keys in no team; choose another name",
                                 param_hint=hint)
    return name


def existing(con, name: str, hint: str = "NAME") -> int:
    """The id of the team with this name; an unknown one is an error that says where to look."""
    team_id = team_rows.find(con, name)
    if team_id is None:
        raise click.BadParameter(f"no team named {name!r}; see `aispendtrack teams list`.", param_hint=hint)
    return team_id


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def teams() -> None:
    """Teams of keys: report, filter and budget by team (default: list)."""


@teams.command("create")
@click.argument("name")
@click.pass_obj
def create(obj, name: str) -> None:
    """Create a team; put keys in it with `keys create --team` or `keys move`."""
    name = team_name(name)
    with writing(obj.db) as con:
        if team_rows.add(con, name) is None:
            raise click.ClickException(f"A team named {name!r} exists already; see `aispendtrack teams list`.")
        audit.record(con, "teams.create", f"team:{name}", None, {"name": name})
    click.echo(f"Created team {name}.")


@teams.command("list")
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
def list_teams(obj, fmt: str = "table", as_json: bool = False) -> None:
    """List teams with how many keys each has (revoked keys included: their calls stay the team's)."""
    with reading(obj.db) as con:
        rows = team_rows.all_teams(con)
    emit(rows, "json" if as_json else fmt, [
        ("NAME", lambda r: r["name"], "<"), ("KEYS", lambda r: str(r["keys"]), ">"),
        ("PER HOUR", lambda r: _limit(r["per_hour_limit"]), ">"),
        ("PER MONTH", lambda r: _limit(r["per_month_limit"]), ">"),
        ("CREATED", lambda r: r["created_at"].strftime("%Y-%m-%d"), "<"),
    ])


def _limit(value: int | None) -> str:
    return f"{value:,}" if value is not None else "-"


@teams.command("set-limit")
@click.argument("name")
@click.option("--per-hour", type=click.IntRange(1, LIMIT_MAX),
              help="Requests per clock hour, over all the team's keys.")
@click.option("--per-month", type=click.IntRange(1, LIMIT_MAX),
              help="Calls per calendar month, over all the team's keys.")
@click.option("--reset", is_flag=True, help="Remove the team's limits.")
@click.pass_obj
def set_limit(obj, name: str, per_hour: int | None, per_month: int | None, reset: bool) -> None:
    """Limit the calls of all a team's keys together (each key's own limits still apply); a running
    proxy counts with it within ~2 seconds. The limits not given are removed."""
    if reset == bool(per_hour or per_month):
        raise click.UsageError("give --per-hour and/or --per-month, or --reset.")
    with writing(obj.db) as con:
        team_id = existing(con, name)
        before = team_rows.limits(con, team_id)
        team_rows.set_limits(con, team_id, per_hour, per_month)
        audit.record(con, "teams.set-limit", f"team:{name}",
                     {"per_hour_limit": before[0], "per_month_limit": before[1]},
                     {"per_hour_limit": per_hour, "per_month_limit": per_month})
    click.echo(f"Team {name}: " + ", ".join(
        limit_said(given, was, period, f"no limit per {period}")
        for given, was, period in ((per_hour, before[0], "hour"), (per_month, before[1], "month")))
        + " over all its keys.")


@teams.command("rename")
@click.argument("old")
@click.argument("new")
@click.pass_obj
def rename(obj, old: str, new: str) -> None:
    """Rename a team; its keys, their history and its budgets stay with it."""
    new = team_name(new, "NEW")
    with writing(obj.db) as con:
        team_id = existing(con, old, "OLD")
        if team_rows.find(con, new) not in (None, team_id):
            raise click.ClickException(f"A team named {new!r} exists already; choose another name.")
        with atomic(con):
            team_rows.rename(con, team_id, new)
            budget_rows.rename_team(con, old, new)
            audit.record(con, "teams.rename", f"team:{new}", {"name": old}, {"name": new})
    click.echo(f"Renamed team {old} to {new}.")


@teams.command("delete")
@click.argument("name")
@click.option("--move-keys-out", is_flag=True,
              help="Take the team's keys out of any team first (their calls then report as no team).")
@click.pass_obj
def delete(obj, name: str, move_keys_out: bool) -> None:
    """Delete a team. Refused while keys belong to it, unless --move-keys-out."""
    with writing(obj.db) as con:
        team_id = existing(con, name)
        keys = team_rows.key_ids(con, team_id)
        if keys and not move_keys_out:
            raise click.ClickException(
                f"Team {name} has {plural(len(keys), 'key')} (id {', '.join(map(str, keys))}); nothing deleted. "
                f"Move them with `aispendtrack keys move KEY --team OTHER` or `--no-team`, or delete with "
                f"--move-keys-out to take them out of any team.")
        with atomic(con):
            moved = team_rows.delete(con, team_id)
            budgets = budget_rows.delete_team(con, name)
            audit.record(con, "teams.delete", f"team:{name}", {"name": name, "keys": moved, "budgets": budgets},
                         None)
    said = [f"{plural(len(moved), 'key')} (id {', '.join(map(str, moved))}) now in no team"] if moved else []
    said += [f"its {plural(len(budgets), 'budget')} (id {', '.join(map(str, budgets))}) deleted"] if budgets else []
    click.echo(f"Deleted team {name}" + (f"; {'; '.join(said)}." if said else "."))


def moved_keys(con, teams: list[str | None]) -> None:
    """After keys changed team: those teams' budgets count their keys' spend as it is now."""
    respend_teams(con, [t for t in teams if t is not None], dt.datetime.now(dt.UTC))
