"""``aispendtrack budgets``: daily and monthly spend limits per key, customer, feature or overall.

A customer or feature budget belongs to a key (``--key ID``): customer ids are the client's own
words, and another key sending the same one must neither spend nor be blocked by it. One over
every key's calls with that id is possible, said explicitly (``--all-keys``)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

import click
from click_default_group import DefaultGroup

from addon.core import config
from addon.core.budgets import SCOPES, TAGS, Budget, with_spend
from addon.core.money import usd
from addon.core.store import budgets as budget_rows
from addon.core.store import keys as key_rows
from addon.core.store import reading, writing

from .output import emit, format_option


def _scope(value: str) -> tuple[str, str | None]:
    kind, _, name = value.partition(":")
    if kind not in SCOPES or (kind == "all") != (name == ""):
        raise click.BadParameter("use all, key:ID, customer:ID or feature:NAME", param_hint="--scope")
    if kind == "key" and not name.isdigit():
        raise click.BadParameter("key:ID takes a key id (see `aispendtrack keys list`)", param_hint="--scope")
    return kind, name or None


def _usd(ctx, param, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value.lstrip("$"))
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount in USD, e.g. 25 or 0.50") from None
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter("must be more than 0")
    return amount


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def budgets() -> None:
    """Spend budgets; with --block, calls in scope get a 429 once one is used up (default: list)."""


@budgets.command("set")
@click.option("--scope", required=True, help="all, key:ID, customer:ID or feature:NAME.")
@click.option("--daily", callback=_usd, help="USD per day (UTC).")
@click.option("--monthly", callback=_usd, help="USD per calendar month (UTC).")
@click.option("--block", is_flag=True, help="Refuse calls in scope (429) once the budget is used up.")
@click.option("--key", "key_id", type=int, help="customer/feature scopes: count only this key's calls.")
@click.option("--all-keys", is_flag=True,
              help="customer/feature scopes: count every key's calls with this id (any key can spend it).")
@click.pass_obj
def set_budget(obj, scope: str, daily: Decimal | None, monthly: Decimal | None, block: bool, key_id: int | None,
               all_keys: bool) -> None:
    """Create or replace the budget of a scope; a running proxy applies it within ~2 seconds."""
    if daily is None and monthly is None:
        raise click.UsageError("give --daily and/or --monthly.")
    kind, value = _scope(scope)
    _check_owner(kind, key_id, all_keys)
    with writing(obj.db) as con:
        if key_id is not None and key_id not in {k["id"] for k in key_rows.all_keys(con)}:
            raise click.BadParameter(f"no key {key_id}; see `aispendtrack keys list`", param_hint="--key")
        budget_id = budget_rows.upsert(con, kind, value, key_id, daily, monthly, block)
    budget = Budget(budget_id, kind, value, daily, monthly, block, key_id)
    limits = ", ".join(f"{usd(a)} {p}" for a, p in ((daily, "a day"), (monthly, "a month")) if a is not None)
    click.echo(f"Budget {budget_id} for {budget.label()}: {limits}{', blocking' if block else ''}.")


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
        ("TODAY", lambda r: _against(r["spent_today_usd"], r["daily_usd"]), ">"),
        ("THIS MONTH", lambda r: _against(r["spent_this_month_usd"], r["monthly_usd"]), ">"),
        ("BLOCK", lambda r: "yes" if r["block"] else "no", "<"),
    ])


def _against(spent: Decimal, budget: Decimal | None) -> str:
    if budget is None:
        return usd(spent)
    return f"{usd(spent)} of {usd(budget)} ({spent / budget:.0%})"


@budgets.command("delete")
@click.argument("budget_id", type=int)
@click.pass_obj
def delete_budget(obj, budget_id: int) -> None:
    """Delete a budget."""
    with writing(obj.db) as con:
        if not budget_rows.delete(con, budget_id):
            raise click.ClickException(f"No budget with id {budget_id}; see `aispendtrack budgets list`.")
    click.echo(f"Deleted budget {budget_id}.")
