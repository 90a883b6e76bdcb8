"""Proxy settings defined once (addon/settings.py), and the quota time zone shared through the database."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import openai
import pytest
from click.testing import CliRunner
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addon import settings
from addon.aispendtrack import make_addons
from addon.core.home import db_path
from addon.core.store import calls as call_rows
from addon.core.store import writing
from cli.main import cli

from .helpers import call_row, run_cli, start_proxy


def test_every_setting_is_an_option_of_its_addon_and_a_proxy_flag():
    with taddons.context(*make_addons()) as tctx:
        for s in settings.SETTINGS:
            assert getattr(tctx.options, s.option) == s.default, s.option
    help_text = CliRunner().invoke(cli, ["proxy", "--help"], terminal_width=200).output
    flags = [s.flag for s in settings.SETTINGS if s.flag]
    assert all(flag in help_text for flag in flags) and len(flags) == len(set(flags))
    unflagged = {s.name for s in settings.SETTINGS if s.flag is None}
    assert unflagged == {"home", "tls_only", "worker_dir"}  # set by --home, --tls-cert and --workers (embedded)


@pytest.mark.parametrize("option,value,message", [
    ("aispendtrack_flush_ms", 5, "aispendtrack_flush_ms must be at least 10, got 5."),
    ("aispendtrack_client_timeout_s", 7200, "aispendtrack_client_timeout_s must be at most 3600, got 7200."),
    ("aispendtrack_quota_tz", "Mars/Base", "unknown time zone 'Mars/Base'"),
])
def test_an_option_out_of_bounds_is_refused_by_name(option, value, message):
    with taddons.context(*make_addons()) as tctx:
        with pytest.raises(exceptions.OptionsError) as raised:
            tctx.options.update(**{option: value})
        assert message in str(raised.value)


def test_the_proxy_flag_refuses_the_same_bounds():
    result = CliRunner().invoke(cli, ["proxy", "--flush-ms", "5"])
    assert result.exit_code == 2 and "5 is not in the range 10<=x<=60000" in result.output


def test_the_quota_zone_given_to_the_proxy_is_the_proxy_s_and_the_cli_s_today(tmp_path, upstream):
    """One call stored between the start of today in UTC+14 and in UTC is today's in exactly one of
    them; a blocking daily budget of its cost shows which day the proxy and the CLI count."""
    home = tmp_path / "home"
    created = json.loads(run_cli(home, "keys", "create", "--name", "zoned", "--json"))
    now = dt.datetime.now(dt.UTC)
    utc_midnight = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
    local = now + dt.timedelta(hours=14)
    plus14_midnight = dt.datetime(local.year, local.month, local.day, tzinfo=dt.UTC) - dt.timedelta(hours=14)
    between = min(utc_midnight, plus14_midnight) + dt.timedelta(minutes=1)
    today_in_plus14 = between >= plus14_midnight  # else it is today's in UTC only
    run_cli(home, "budgets", "set", "--scope", "customer:acme", "--all-keys", "--daily", "0.25", "--block")
    with writing(db_path(home)) as con:
        call_rows.insert(con, [call_row(1, ts=between, customer_id="acme", cost_usd=Decimal("0.25"))])

    def spent_today() -> Decimal:
        [budget] = json.loads(run_cli(home, "budgets", "list", "--json"))
        return Decimal(str(budget["spent_today_usd"]))

    proxy = start_proxy(home, upstream.url, tmp_path / "proxy.log", key=created["key"],
                        extra_args=("--quota-tz", "Etc/GMT-14"))
    try:
        stored = json.loads(run_cli(home, "config", "show", "--format", "json"))
        assert stored == [{"name": "quota_tz", "value": "Etc/GMT-14"}]
        assert spent_today() == (Decimal("0.25") if today_in_plus14 else 0)
        client = proxy.openai(headers={"x-customer-id": "acme"})
        if today_in_plus14:
            with pytest.raises(openai.RateLimitError) as raised:
                client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            tomorrow = plus14_midnight + dt.timedelta(days=1)
            # A budget over all keys keeps its figures from the caller; its reset is the zone's midnight.
            assert f"daily budget set by the administrator over customer acme on all keys blocks this call until " \
                   f"{tomorrow:%Y-%m-%d %H:%M} UTC." in raised.value.message
        else:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        rows = proxy.rows("acme", expect=1 if today_in_plus14 else 2)
    finally:
        proxy.stop()
    run_cli(home, "config", "set", "quota-tz", "UTC")  # now the CLI's today is UTC's
    assert len(rows) == (1 if today_in_plus14 else 2)  # a refused call is not recorded
    assert spent_today() == (0 if today_in_plus14 else sum(Decimal(str(r["cost_usd"])) for r in rows))
