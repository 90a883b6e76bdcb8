"""Where "this hour", "today" and "this month" start and end in a zone, around the clock changes.

Quotas, budgets, retention and reports all count with these bounds. They must not depend on the
zone the server itself runs in, so every case runs on a host set to UTC and on one set to Kathmandu
(UTC+05:45, a zone no quota or report uses here).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from addon.core import periods
from addon.core.periods import UnknownZone, day_start, hour_start, month_start, next_day_start, next_month_start

LA = zoneinfo.ZoneInfo("America/Los_Angeles")


pytestmark = pytest.mark.usefixtures("host_zone")  # tests/conftest.py: on a UTC and a +5:45 host


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.UTC)


def test_the_day_the_clocks_go_back_in_los_angeles_lasts_25_hours():
    # 2026-11-01: PDT (UTC-7) ends at 02:00 local, PST (UTC-8) follows.
    during = utc(2026, 11, 1, 20, 0)
    start = day_start(during, LA)
    assert start == utc(2026, 11, 1, 7, 0) and start.utcoffset() == dt.timedelta(0)
    end = next_day_start(start, LA)
    assert end == utc(2026, 11, 2, 8, 0) and end.utcoffset() == dt.timedelta(0)
    assert day_start(utc(2026, 11, 2, 7, 59, 59), LA) == start  # 23:59:59 PST is still November 1st


def test_the_day_the_clocks_go_forward_lasts_23_hours():
    # 2026-03-08: PST ends at 02:00 local.
    start = day_start(utc(2026, 3, 8, 12, 0), LA)
    assert start == utc(2026, 3, 8, 8, 0)
    assert next_day_start(start, LA) == utc(2026, 3, 9, 7, 0)


def test_a_day_far_east_of_utc_starts_the_evening_before_in_utc():
    auckland = zoneinfo.ZoneInfo("Pacific/Auckland")  # UTC+13 in November (daylight saving time)
    start = day_start(utc(2026, 11, 25, 12, 0), auckland)
    assert start == utc(2026, 11, 25, 11, 0)
    assert next_day_start(start, auckland) == utc(2026, 11, 26, 11, 0)
    month = month_start(start, auckland)
    assert month == utc(2026, 10, 31, 11, 0)  # November 1st, 00:00 in Auckland
    end = next_month_start(month, auckland)
    assert end == utc(2026, 11, 30, 11, 0) and end.utcoffset() == dt.timedelta(0)


def test_a_month_starts_and_ends_at_local_midnight_whatever_the_offset():
    # November in Los Angeles starts in PDT and ends in PST.
    on_the_first = utc(2026, 11, 1, 19, 0)  # noon on the 1st, local
    start = month_start(on_the_first, LA)
    assert start == utc(2026, 11, 1, 7, 0) and start.utcoffset() == dt.timedelta(0)
    assert next_month_start(start, LA) == utc(2026, 12, 1, 8, 0)
    assert month_start(utc(2026, 12, 1, 7, 59), LA) == start  # still November 30th, local
    # December rolls over into the next year.
    december = month_start(utc(2026, 12, 15), LA)
    assert next_month_start(december, LA) == utc(2027, 1, 1, 8, 0)


def test_an_hour_is_the_utc_clock_hour_whatever_zone_the_time_was_given_in():
    kathmandu = zoneinfo.ZoneInfo("Asia/Kathmandu")
    given = dt.datetime(2026, 11, 25, 16, 20, 59, 999_999, tzinfo=kathmandu)  # 10:35:59.999999 UTC
    start = hour_start(given)
    assert start == utc(2026, 11, 25, 10, 0) and start.utcoffset() == dt.timedelta(0)
    assert start.microsecond == 0


@pytest.mark.parametrize("left,expected", [(0.0, 1), (0.2, 1), (1.0, 1), (1.2, 2), (59.9, 60), (-5.0, 1)])
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(left, expected):
    now = utc(2026, 11, 25, 10, 59)
    assert periods.seconds_until(now + dt.timedelta(seconds=left), now) == expected


def test_an_unknown_zone_says_what_to_use():
    assert periods.zone("Europe/Paris") == zoneinfo.ZoneInfo("Europe/Paris")
    # localtime (the host's own zone: each host would count its own days), posixrules and Factory are
    # files of the zone database, not zones.
    for name in ("Mars/Olympus", "../etc/passwd", "", "localtime", "posixrules", "Factory", "posix/Factory",
                 "right/localtime"):
        with pytest.raises(UnknownZone, match="use an IANA name such as UTC or America/Los_Angeles"):
            periods.zone(name)


def test_a_stored_quota_zone_that_names_no_zone_is_read_as_utc_with_a_warning(tmp_path, caplog, monkeypatch):
    """An older version stored `config set quota-tz localtime`: every process then counted its own
    host's days."""
    from addon.core import config
    from addon.core.store import config as config_rows
    from addon.core.store import writing
    monkeypatch.setattr(config, "_WARNED", set())  # this process may have said it before
    with writing(tmp_path / "a.duckdb") as con:
        config_rows.put(con, config.QUOTA_TZ, "localtime", dt.datetime.now(dt.UTC))
        assert config.quota_zone(con) == config.quota_zone(con) == periods.UTC
    assert caplog.text.count("the stored quota time zone: unknown time zone 'localtime'") == 1  # once a process
