"""``aispendtrack config``: settings every process reads from the database (the quota time zone)."""

from __future__ import annotations

import click
from click_default_group import DefaultGroup

from addon.core import audit, periods
from addon.core import config as shared
from addon.core.store import reading, writing

from .output import emit, format_option


@click.group(cls=DefaultGroup, default="show", default_if_no_args=True)
def config() -> None:
    """Settings the proxy, the CLI and the web app share (default: show them)."""


@config.command()
@format_option()
@click.pass_obj
def show(obj, fmt: str = "table") -> None:
    """The shared settings and their values."""
    with reading(obj.db) as con:
        values = shared.values(con)
    emit([{"name": k, "value": v} for k, v in values.items()], fmt, [
        ("NAME", lambda r: r["name"], "<"), ("VALUE", lambda r: r["value"], "<")])


@config.command("set")
@click.argument("name", type=click.Choice([shared.QUOTA_TZ, "quota-tz"]))
@click.argument("value")
@click.pass_obj
def set_value(obj, name: str, value: str) -> None:
    """Set a shared setting, e.g. `config set quota-tz America/New_York`."""
    with writing(obj.db) as con:
        before = shared.quota_zone(con).key
        try:
            zone = shared.set_quota_zone(con, value)
        except periods.UnknownZone as exc:
            raise click.BadParameter(str(exc), param_hint="VALUE") from None
        audit.record(con, "config.set", f"config:{shared.QUOTA_TZ}", {"value": before}, {"value": zone.key})
    click.echo(f"quota_tz = {zone.key}. Quotas and budgets count days and months in it; a running proxy "
               "picks it up when restarted.")
