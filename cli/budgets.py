"""``aispendtrack budgets``: daily and monthly spend limits per key, team, customer, feature or overall.

A customer or feature budget belongs to a key (``--key ID``): customer ids are the client's own
words, and another key sending the same one must neither spend nor be blocked by it. One over
every key's calls with that id is possible, said explicitly (``--all-keys``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

import click
from click_default_group import DefaultGroup

from addon.core import audit, config
from addon.core.budgets import MAX_TAG_LENGTH, SCOPES, TAGS, Budget, valid_tag, with_spend
from addon.core.money import MICRO, usd
from addon.core.store import budgets as budget_rows
from addon.core.store import keys as key_rows
from addon.core.store import reading, writing
from addon.core.store import teams as team_rows
from addon.core.wording import percent

from .output import emit, format_option


def _scope(value: str) -> tuple[str, str | None]:
    kind, _, name = value.partition(":")
    if kind not in SCOPES or (kind == "all") != (name == ""):
        raise click.BadParameter("use all, key:ID, team:NAME, customer:ID or feature:NAME", param_hint="--scope")
    if kind == "key":
        if not (name.isascii() and name.isdigit()):  # "²".isdigit(), but int("²") is an error
            raise click.BadParameter("key:ID takes a key id (see `aispendtrack keys list`)", param_hint="--scope")
        name = str(int(name))  # as budgets are matched to a key's calls: key:01 counted none of key 1's
    if kind in TAGS and not valid_tag(name):
        raise click.BadParameter(f"a {kind} is 1 to {MAX_TAG_LENGTH} printable characters, as the proxy accepts "
                                 f"in x-{'customer-id' if kind == 'customer' else kind}", param_hint="--scope")
    return kind, name or None


# What the budgets' columns hold (DECIMAL(18, 6)): whole millionths of a dollar (money.MICRO, the
# least amount written), below a trillion.
_MOST = Decimal("999999999999.999999")


def _usd(ctx, param, value: str | None) -> Decimal | None:
    """The amount as stored: rounded to the millionth and written out, so what is printed, audited
    and stored agree (DuckDB 1.5 bound Decimal("1e3") as 1, and rounded 0.0000004 to a $0 budget
    that blocked every call); less than a millionth, or more than the column holds, refused."""
    if value is None:
        return None
    try:
        amount = Decimal(value.lstrip("$"))
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount in USD, e.g. 25 or 0.50") from None
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter("must be more than 0")
    if amount > _MOST:
        raise click.BadParameter(f"must be at most {usd(_MOST.quantize(Decimal('0.01'), ROUND_DOWN))}")
    stored = amount.quantize(MICRO, ROUND_HALF_UP)
    if stored == 0:
        raise click.BadParameter(f"must be at least {usd(MICRO)}: a budget keeps millionths of a dollar")
    return stored


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def budgets() -> None:
    """Spend budgets; with --block, calls in scope get a 429 once one is used up (default: list)."""


@budgets.command("set")
@click.option("--scope", required=True, help="all, key:ID, team:NAME (its keys' calls), customer:ID or feature:NAME.")
@click.option("--daily", callback=_usd,
              help="USD per day (in the quota zone, --quota-tz); a budget's other period is kept.")
@click.option("--monthly", callback=_usd,
              help="USD per calendar month (in the quota zone); a budget's other period is kept.")
@click.option("--clear-daily", is_flag=True, help="Remove the budget's daily amount (its monthly one stays).")
@click.option("--clear-monthly", is_flag=True, help="Remove the budget's monthly amount (its daily one stays).")
@click.option("--block/--no-block", default=None,
              help="Refuse calls in scope (429) once the budget is used up, or stop refusing; without either, "
                   "as it was (a new budget: not blocking).")
@click.option("--key", "key_id", type=int, help="customer/feature scopes: count only this key's calls.")
@click.option("--all-keys", is_flag=True,
              help="customer/feature scopes: count every key's calls with this id (any key can spend it).")
@click.pass_obj
def set_budget(obj, scope: str, daily: Decimal | None, monthly: Decimal | None, clear_daily: bool,
               clear_monthly: bool, block: bool | None, key_id: int | None, all_keys: bool) -> None:
    """Create a scope's budget or change what is given of it; a running proxy applies it within ~2 seconds."""
    for period, amount, cleared in (("daily", daily, clear_daily), ("monthly", monthly, clear_monthly)):
        if amount is not None and cleared:
            raise click.UsageError(f"--{period} and --clear-{period} contradict each other: give one.")
    if daily is None and monthly is None and not (clear_daily or clear_monthly) and block is None:
        raise click.UsageError("give --daily and/or --monthly.")
    kind, value = _scope(scope)
    _check_owner(kind, key_id, all_keys)
    with writing(obj.db) as con:
        known = {k["id"] for k in key_rows.all_keys(con)}
        if key_id is not None and key_id not in known:
            raise click.BadParameter(f"no key {key_id}; see `aispendtrack keys list`", param_hint="--key")
        if kind == "key" and int(value or 0) not in known:
            raise click.BadParameter(f"no key {value}; see `aispendtrack keys list`", param_hint="--scope")
        if kind == "team" and team_rows.find(con, value or "") is None:
            raise click.BadParameter(f"no team named {value!r}; see `aispendtrack teams list`", param_hint="--scope")
        found = budget_rows.find(con, kind, value, key_id)
        old = Budget.from_row(found) if found else None
        new = Budget(old.id if old else 0, kind, value,
                     _amount(daily, clear_daily, old.daily_usd if old else None),
                     _amount(monthly, clear_monthly, old.monthly_usd if old else None),
                     (old.block if old else False) if block is None else block, key_id)
        if new.daily_usd is None and new.monthly_usd is None:
            if old is None:
                raise click.UsageError("give --daily and/or --monthly.")
            raise click.UsageError(f"that leaves budget {old.id} with no amount; remove it with "
                                   f"`aispendtrack budgets delete {old.id}`.")
        if old is None:
            new = dataclasses.replace(new, id=budget_rows.add(con, kind, value, key_id, new.daily_usd,
                                                              new.monthly_usd, new.block))
        else:
            budget_rows.update(con, old.id, new.daily_usd, new.monthly_usd, new.block)
        audit.record(con, "budgets.set", f"budget:{new.id}", old and dataclasses.asdict(old), dataclasses.asdict(new))
    click.echo(_what_changed(old, new))


def _amount(given: Decimal | None, cleared: bool, before: Decimal | None) -> Decimal | None:
    """What a period's amount becomes: removed, the one given, or as it was."""
    if cleared:
        return None
    return given if given is not None else before


def _was(old: Budget | None, before: Decimal | None, after: Decimal) -> str:
    if old is None:
        return ""  # a new budget: nothing to compare with
    if before is None:
        return " (new)"
    return " (unchanged)" if after == before else f" (was {usd(before)})"


def _what_changed(old: Budget | None, new: Budget) -> str:
    """The budget as it is now; of one that existed, what each period was and what was removed."""
    amounts, removed = [], []
    for period, unit in (("daily", "a day"), ("monthly", "a month")):
        before, after = (getattr(b, f"{period}_usd") if b else None for b in (old, new))
        if after is not None:
            amounts.append(f"{usd(after)} {unit}{_was(old, before, after)}")
        elif before is not None:
            removed.append(f" Removed its {period} budget of {usd(before)}.")
    if old is None or old.block == new.block:
        blocking = ", blocking" if new.block else "" if old is None else ", not blocking"
    else:
        blocking = ", now blocking" if new.block else ", no longer blocking"
    return f"Budget {new.id} for {new.label()}: {', '.join(amounts)}{blocking}.{''.join(removed)}"


def _check_owner(kind: str, key_id: int | None, all_keys: bool) -> None:
    if kind not in TAGS:
        if key_id is not None or all_keys:
            raise click.UsageError(f"--key and --all-keys go with customer:ID or feature:NAME, not {kind}.")
        return
    if (key_id is None) == (not all_keys):
        raise click.UsageError(
            f"say whose {kind} this is: --key ID counts only that key's calls with this {kind} (clients choose "
            f"their own {kind} ids, so another key may send the same one), or --all-keys counts every key's "
            f"calls with it (any key that sends it spends the budget and, with --block, is blocked by it).")


@budgets.command("list")
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
def list_budgets(obj, fmt: str = "table", as_json: bool = False) -> None:
    """Budgets with what has been spent against them today and this month (in the quota time zone)."""
    with reading(obj.db) as con:
        rows = with_spend(con, dt.datetime.now(dt.UTC), config.quota_zone(con))
    emit(rows, "json" if as_json else fmt, [
        ("ID", lambda r: str(r["id"]), ">"),
        ("SCOPE", lambda r: Budget.from_row(r).scope_arg, "<"),
        ("KEY", lambda r: str(r["key_id"]) if r["key_id"] else "all" if r["scope"] in TAGS else "", "<"),
        ("TODAY", lambda r: _against(r["spent_today_usd"], r["daily_usd"], r["unpriced_calls_today"]), ">"),
        ("THIS MONTH", lambda r: _against(r["spent_this_month_usd"], r["monthly_usd"],
                                          r["unpriced_calls_this_month"]), ">"),
        ("BLOCK", lambda r: "yes" if r["block"] else "no", "<"),
    ])


def _against(spent: Decimal, budget: Decimal | None, unpriced: int) -> str:
    """The known spend against the budget, and the calls it lacks the cost of (never read as $0)."""
    unknown = f" + {unpriced:,} unpriced" if unpriced else ""
    if budget is None:
        return usd(spent) + unknown
    return f"{usd(spent)}{unknown} of {usd(budget)} ({percent(float(spent / budget))})"


@budgets.command("delete")
@click.argument("budget_id", type=int)
@click.pass_obj
def delete_budget(obj, budget_id: int) -> None:
    """Delete a budget."""
    with writing(obj.db) as con:
        found = [b for b in budget_rows.all_budgets(con) if b["id"] == budget_id]
        if not budget_rows.delete(con, budget_id):
            raise click.ClickException(f"No budget with id {budget_id}; see `aispendtrack budgets list`.")
        audit.record(con, "budgets.delete", f"budget:{budget_id}", found[0], None)
    click.echo(f"Deleted budget {budget_id}.")
