"""The report page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The page is served by the real proxy process (``aispendtrack proxy --web-port``), over a DuckDB
file holding hand-made calls from the last days, so what the page shows can be checked against
``aispendtrack report`` and against a call made through the proxy while the page is open.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from pathlib import Path

import httpx
import pytest

from addon.core import home as home_dir
from addon.core.store import calls as call_rows
from addon.core.store import writing

from .helpers import CHROMIUM, free_port, run_cli, start_proxy
from .helpers import report_row as row

playwright_api = pytest.importorskip("playwright.sync_api")
ARTIFACTS = Path(__file__).parent / "artifacts"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")


def _recent(hours_ago: float, *args, **kwargs) -> dict:
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)).replace(tzinfo=None).isoformat()
    return row(ts, *args, **kwargs)


@pytest.fixture(scope="module")
def site(tmp_path_factory, upstream):
    home = tmp_path_factory.mktemp("web-home")
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [
            _recent(30, "gpt-4o", "1.00", 100, customer="acme"),
            _recent(20, "gpt-4o", "2.00", 200, customer="globex", feature="search"),
            _recent(10, "claude-sonnet-4", "3.00", 300, customer="globex", key_id=2, provider="anthropic"),
            _recent(5, "acme-llm", None, 400, customer="initech", key_id=2),
            _recent(2, "gpt-4o", "0", 50, customer="acme", status=500, usage="none"),
        ])
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    run_cli(home, "budgets", "set", "--scope", "customer:globex", "--all-keys", "--monthly", "4", "--block")
    web_port = free_port()
    proxy = start_proxy(home, upstream.url, tmp_path_factory.mktemp("web-logs") / "proxy.log",
                        extra_args=("--web-port", str(web_port)))
    run_cli(home, "teams", "create", "platform")
    run_cli(home, "keys", "move", str(proxy.key_id), "--team", "platform")
    yield {"proxy": proxy, "url": f"http://127.0.0.1:{web_port}", "admin": admin, "home": home}
    proxy.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"console errors: {errors}"


def sign_in(page, site, secret: str | None = None) -> None:
    page.goto(site["url"] + "/")
    page.fill("#secret", secret or site["admin"])
    page.click("button[type=submit]")
    wait_until_drawn(page)


def wait_until_drawn(page, timeout: float = 30) -> None:
    # Polled from here: wait_for_function evaluates its predicate with eval(), which the page's
    # Content-Security-Policy forbids (as it should).
    # Right after a click that navigates (sign-in), the old document may be gone and the new one
    # not yet have a body, or the evaluation may be cut by the navigation: both mean "not yet".
    deadline = time.monotonic() + timeout
    while not _drawn(page):
        assert time.monotonic() < deadline, "the page did not finish drawing"
        time.sleep(0.05)


def _drawn(page) -> bool:
    try:
        return page.evaluate("document.body !== null && document.body.dataset.loaded === location.search")
    except playwright_api.Error as exc:
        if "context was destroyed" in str(exc) or "navigation" in str(exc).lower():
            return False
        raise


def test_nothing_is_visible_without_signing_in(page, site):
    page.goto(site["url"] + "/?range=30d")
    assert page.url.startswith(site["url"] + "/login")
    assert httpx.get(site["url"] + "/api/v1/report").status_code == 401
    page.fill("#secret", "ask_wrong")
    page.click("button[type=submit]")
    assert "not an active key" in page.inner_text(".error")


def test_session_cookie_is_httponly_and_samesite_and_logout_ends_it(page, site):
    sign_in(page, site)
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert site["admin"] not in cookie["value"]
    page.click("text=Sign out")
    page.wait_for_url("**/login")
    page.goto(site["url"] + "/")
    assert "/login" in page.url


def test_totals_on_the_page_equal_the_cli_report(page, site):
    sign_in(page, site)
    groups = json.loads(run_cli(site["home"], "report", "--by", "model", "--since", "7d", "--format", "json"))
    cli_cost = sum(g["cost_usd"] or 0 for g in groups)
    assert float(page.get_attribute("#total-spend", "data-value")) == pytest.approx(cli_cost)
    assert int(page.get_attribute("#total-calls", "data-value")) == sum(g["calls"] for g in groups)
    assert page.inner_text("#total-spend") == "$6.00*"  # * : one call is unpriced
    assert "1 call used models without a price" in page.inner_text("#warnings")
    rows = page.locator("#by-model tbody tr")
    assert rows.first.get_attribute("data-value") in ("gpt-4o", "claude-sonnet-4")  # $3 each, the top two
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_clicking_a_model_row_filters_the_page_and_the_url(page, site):
    sign_in(page, site)
    page.click("#by-model tbody tr[data-value='gpt-4o']")
    page.wait_for_url("**model=gpt-4o**")
    wait_until_drawn(page)
    assert page.get_attribute("#total-calls", "data-value") == "3"
    customers = page.locator("#by-customer tbody tr").evaluate_all("rows => rows.map(r => r.dataset.value)")
    assert sorted(customers) == ["acme", "globex"]  # initech never used gpt-4o
    assert "model: gpt-4o" in page.inner_text("#filters")
    page.reload()  # the view is in the URL: a bookmark shows the same
    wait_until_drawn(page)
    assert page.get_attribute("#total-calls", "data-value") == "3"


def test_a_call_through_the_proxy_shows_up_in_recent_calls_within_10_seconds(page, site):
    sign_in(page, site)
    proxy = site["proxy"]
    proxy.openai(headers={"x-customer-id": "live-page"}).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    page.wait_for_selector("#recent td:text('live-page')", timeout=10_000)


def test_export_downloads_the_rows_of_the_view(page, site):
    sign_in(page, site)
    page.click("#by-customer tbody tr[data-value='globex']")
    page.wait_for_url("**customer=globex**")
    wait_until_drawn(page)
    with page.expect_download() as download:
        page.click("#export-csv")
    rows = list(csv.DictReader(open(download.value.path())))
    assert sorted(r["model"] for r in rows) == ["claude-sonnet-4", "gpt-4o"]


def test_the_by_key_and_recent_calls_tables_name_the_keys(page, site):
    sign_in(page, site)
    names = page.eval_on_selector_all("#by-key tbody tr", "rows => rows.map(r => r.cells[0].innerText)")
    assert sorted(names) == ["2", "tests"]  # key 2 of the data set was never created: its id is all there is
    # Recent calls: the same names (key 1 is the proxy's key "tests"), the id in the cell's tooltip.
    cells = page.eval_on_selector_all(
        "#recent tbody tr", "rows => rows.map(r => [r.cells[1].innerText, r.cells[1].querySelector('[title]')?.title])")
    assert {name for name, _ in cells} == {"tests", "2"}
    key_id = site["proxy"].key_id
    assert ["tests", f"key id {key_id}"] in cells and ["2", "key id 2"] in cells
    assert page.get_attribute(f"#by-key tr[data-value='{key_id}'] td [title]", "title") == f"key id {key_id}"


def test_the_by_team_table_matches_the_cli_and_filters_the_page_to_a_team(page, site):
    sign_in(page, site)
    shown = dict(page.eval_on_selector_all(
        "#by-team tbody tr", "rows => rows.map(r => [r.cells[0].innerText, r.cells[2].innerText])"))
    teams = json.loads(run_cli(site["home"], "report", "--by", "team", "--since", "7d", "--format", "json"))
    assert {name for name in shown} == {"platform", "(no team)"} == {g["team"] or "(no team)" for g in teams}
    for group in teams:  # the proxy's key is in the team; key 2 (never created) in none
        assert float(shown[group["team"] or "(no team)"].strip("$*")) == pytest.approx(group["cost_usd"])
    page.click("#by-team tbody tr[data-value='platform']")
    page.wait_for_url("**team=platform**")
    wait_until_drawn(page)
    [platform] = [g for g in teams if g["team"] == "platform"]
    assert float(page.get_attribute("#total-spend", "data-value")) == pytest.approx(platform["cost_usd"])
    assert page.eval_on_selector_all("#by-key tbody tr", "rows => rows.map(r => r.cells[0].innerText)") == ["tests"]


def test_budgets_show_their_status(page, site):
    sign_in(page, site)
    text = page.inner_text("#budget-table")
    assert "customer:globex" in text and "of $4.00" in text
    api = httpx.get(site["url"] + "/api/v1/budgets", headers={"Authorization": f"Bearer {site['admin']}"})
    [budget] = api.json()
    assert budget["scope_value"] == "globex" and budget["block"] is True


def test_admins_see_tracked_vs_provider_and_keys_do_not(page, site):
    from decimal import Decimal

    from addon.core.store import reconciliations
    month = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    gap_day = month + dt.timedelta(days=1)
    summary = {"ours_cost_usd": Decimal("0.34"), "theirs_cost_usd": Decimal("0.3475"),
               "difference_usd": Decimal("0.0075"), "difference_percent": 2.158}
    with writing(home_dir.db_path(site["home"])) as con:
        reconciliations.record(con, "openai", month, month + dt.timedelta(days=2), dt.datetime.now(dt.UTC), summary,
                               [{"bucket": gap_day, "model": "gpt-4o-2024-08-06", "status": "untracked"}])
    sign_in(page, site)
    text = page.inner_text("#reconciliation-table")
    assert "openai" in text and "$0.34" in text and "$0.3475" in text and "$0.0075 (2.2%)" in text
    assert f"{gap_day:%Y-%m-%d} gpt-4o-2024-08-06 untracked" in text
    page.click("text=Sign out")
    sign_in(page, site, site["proxy"].key)  # a key sees its own calls, not the organisation's books
    assert page.locator("#reconciliation").count() == 0


def _context_page(browser, errors: list[str], **options):
    context = browser.new_context(**options)
    page = context.new_page()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page


_CUT = """() => {
  const cut = [];
  for (const table of document.querySelectorAll("main table")) {
    const box = table.parentElement.getBoundingClientRect();
    if (table.parentElement.scrollWidth > table.parentElement.clientWidth + 1) cut.push(table.id + " scrolls");
    for (const cell of table.querySelectorAll("th, td")) {
      const r = cell.getBoundingClientRect();
      if (r.width && (r.right > box.right + 1 || r.left < box.left - 1)) {
        cut.push(table.id + ": " + cell.textContent);
        break;
      }
    }
  }
  return cut;
}"""


@pytest.mark.parametrize("width", [360, 768, 1400, 2560])
def test_no_column_is_cut_at_any_width(browser, site, width):
    errors: list[str] = []
    context, page = _context_page(browser, errors, viewport={"width": width, "height": 900})
    try:
        sign_in(page, site)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        assert page.evaluate(_CUT) == []
        assert page.locator("#by-model tbody tr").count() >= 3 and page.locator("#recent tbody tr").count() >= 5
        stacked = page.evaluate("[...document.querySelectorAll('table.stacked')].map(t => t.id)")
        if width <= 768:  # too narrow for a row of columns: each row a block of labelled cells
            assert "recent" in stacked
            assert page.get_attribute("#recent tbody tr:first-child td:nth-child(7)", "data-label") == "cost"
        if width >= 1400:
            assert stacked == [] and page.locator("#by-model th", has_text="errors").is_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}.png"), full_page=True)
    finally:
        context.close()
    assert errors == [], f"console errors: {errors}"


def test_times_are_in_the_viewers_zone_with_a_switch_to_utc(browser, site):
    errors: list[str] = []
    context, page = _context_page(browser, errors, timezone_id="America/New_York",
                                  viewport={"width": 1280, "height": 900})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url) if "/api/v1/report" in request.url else None)
    try:
        page.goto(site["url"] + "/?range=today")
        page.fill("#secret", site["admin"])
        page.click("button[type=submit]")
        wait_until_drawn(page)
        import zoneinfo
        ny = dt.datetime.now(zoneinfo.ZoneInfo("America/New_York"))
        assert page.inner_text("#zone-name") == "America/New_York"
        assert page.inner_text("#period").startswith(f"{ny:%Y-%m-%d} 00:00 to ")  # today starts at NY midnight
        assert asked and all("tz=America%2FNew_York" in url for url in asked)
        newest = httpx.get(site["url"] + "/api/v1/calls?limit=1",
                           headers={"Authorization": f"Bearer {site['admin']}"}).json()["calls"][0]
        at = dt.datetime.fromisoformat(newest["ts"])
        first_time = page.inner_text("#recent tbody tr:first-child td:first-child")
        assert first_time == f"{at.astimezone(zoneinfo.ZoneInfo('America/New_York')):%Y-%m-%d %H:%M}"
        assert page.inner_text("#budget-zone") == "UTC"  # budgets count in the proxy's zone, not the viewer's
        page.click("#zone-switch")
        page.wait_for_url("**tz=UTC**")
        wait_until_drawn(page)
        assert page.inner_text("#zone-name") == "UTC" and page.inner_text("#zone-switch") == "Local time"
        assert page.inner_text("#recent tbody tr:first-child td:first-child") == f"{at:%Y-%m-%d %H:%M}"
        assert "tz=UTC" in asked[-1]
    finally:
        context.close()
    assert errors == [], f"console errors: {errors}"


def test_totals_and_chart_follow_new_calls(page, site):
    sign_in(page, site)
    before = int(page.get_attribute("#total-calls", "data-value"))
    site["proxy"].openai(headers={"x-customer-id": "live-totals"}).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    deadline = time.monotonic() + 15
    while int(page.get_attribute("#total-calls", "data-value")) != before + 1:
        assert time.monotonic() < deadline, "the totals did not follow the new call"
        time.sleep(0.2)
    page.wait_for_selector("#by-customer tr[data-value='live-totals']", timeout=5_000)


def _insert(site, rows: list[dict]) -> None:
    with writing(home_dir.db_path(site["home"])) as con:
        call_rows.insert(con, rows)


def _utc_text(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).replace(tzinfo=None).isoformat()


_BARS = """() => {
  const chart = Chart.getChart(document.getElementById("chart"));
  const sums = chart.data.labels.map((_, i) => chart.data.datasets.reduce((sum, d) => sum + d.data[i], 0));
  return { labels: chart.data.labels, sums };
}"""


# Each zone gets a day of its own, weeks before the other tests' calls, so no view mixes them.
@pytest.mark.parametrize("zone, days_back", [("America/Los_Angeles", 45), ("UTC", 60)])
def test_todays_bar_holds_todays_spend_in_the_first_hour_of_the_day(browser, site, zone, days_back):
    import zoneinfo
    tz = zoneinfo.ZoneInfo(zone)
    day = (dt.datetime.now(tz) - dt.timedelta(days=days_back)).date()
    midnight = dt.datetime.combine(day, dt.time(), tz)
    _insert(site, [row(_utc_text(midnight + dt.timedelta(minutes=5)), "gpt-4o", "0.08", 100, customer="early"),
                   row(_utc_text(midnight + dt.timedelta(minutes=20)), "gpt-4o", "0.05", 100, customer="early"),
                   row(_utc_text(midnight - dt.timedelta(days=2, hours=-3)), "gpt-4o", "1.00", 100, customer="early")])
    errors: list[str] = []
    context, page = _context_page(browser, errors, timezone_id=zone, viewport={"width": 1280, "height": 900})
    try:
        page.clock.set_fixed_time(midnight + dt.timedelta(minutes=30))  # 00:30 in the viewer's zone
        sign_in(page, site)  # the last 7 days, by day
        bars = page.evaluate(_BARS)
        assert bars["labels"][-1] == f"{day:%Y-%m-%d}"
        assert round(bars["sums"][-1], 6) == 0.13  # today's bar: the two calls of its first half hour
        assert page.inner_text("#total-spend") == "$1.13"
        assert round(sum(bars["sums"]), 6) == float(page.get_attribute("#total-spend", "data-value"))
        page.click("button[data-range=today]")  # today, by hour
        page.wait_for_url("**range=today**")
        wait_until_drawn(page)
        bars = page.evaluate(_BARS)
        assert page.inner_text("#total-spend") == "$0.13"
        assert bars["labels"] == [f"{day:%Y-%m-%d} 00:00"] and round(bars["sums"][0], 6) == 0.13
    finally:
        context.close()
    assert errors == [], f"console errors: {errors}"


def _budget(site, *args: str) -> int:
    """`aispendtrack budgets set ARGS`; the new budget's id (from "Budget N for ...")."""
    return int(run_cli(site["home"], "budgets", "set", *args).split()[1])


def _budget_rows(page) -> dict[str, list[str]]:
    """{scope cell: the other cells} of the budgets panel."""
    cells = page.eval_on_selector_all("#budget-table tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.innerText))")
    return {first: rest for first, *rest in cells}


def test_a_key_sees_its_own_budgets_and_those_over_all_keys_never_another_keys(page, site):
    own, everyone = site["proxy"].key_id, "all calls (covers all keys)"
    other = json.loads(run_cli(site["home"], "keys", "create", "--name", "other", "--json"))["id"]
    run_cli(site["home"], "config", "set", "quota_tz", "Asia/Tokyo")
    added: list[int] = []
    try:
        # No budget of its own yet: the heading still names the zone the proxy counts days in.
        sign_in(page, site, site["proxy"].key)
        assert page.is_visible("#no-budgets") and page.text_content("#budget-zone") == "Asia/Tokyo"
        added += [_budget(site, "--scope", "all", "--monthly", "500", "--block"),
                  _budget(site, "--scope", f"key:{own}", "--daily", "2"),
                  _budget(site, "--scope", f"key:{other}", "--daily", "3")]
        page.reload()
        wait_until_drawn(page)
        assert page.is_hidden("#no-budgets")
        rows = _budget_rows(page)
        assert set(rows) == {f"key:{own}", everyone}  # not key:{other}'s, not customer globex's on all keys
        assert " of $2.00 (" in rows[f"key:{own}"][0]
        # The organisation's budget: its limit and whether it blocks, not the other keys' spend in it.
        assert rows[everyone] == ["–", "limit $500.00 (all keys' spend not shown)", "yes"]
        assert page.text_content("#budget-zone") == "Asia/Tokyo"
        page.click("text=Sign out")
        sign_in(page, site)
        assert page.text_content("#budget-zone") == "Asia/Tokyo"
        rows = _budget_rows(page)
        assert set(rows) == {f"key:{own}", f"key:{other}", everyone, "customer:globex on all keys"}
        assert " of $500.00 (" in rows[everyone][1]
    finally:
        run_cli(site["home"], "config", "set", "quota_tz", "UTC")
        for budget_id in added:
            run_cli(site["home"], "budgets", "delete", str(budget_id))


_PHONE = """() => {
  const inputs = ["custom-from", "custom-to"].map((id) => {
    const input = document.getElementById(id);
    // The same input left at its own width, beside it: what the full date needs in this font.
    const free = Object.assign(input.cloneNode(), { id: "" });
    free.style.cssText = "position: absolute; visibility: hidden; width: auto; min-width: 0; max-width: none";
    input.after(free);
    const width = (node) => node.getBoundingClientRect().width;
    const sizes = { value: input.value, width: width(input), needs: width(free) };
    free.remove();
    return sizes;
  });
  const chart = Chart.getChart(document.getElementById("chart"));
  return { inputs, plot: chart.chartArea.height, series: chart.data.datasets.length,
           scrollWidth: document.documentElement.scrollWidth, viewport: innerWidth, height: innerHeight };
}"""


def test_the_page_fits_a_phone(browser, site):
    first = (dt.datetime.now(dt.UTC) - dt.timedelta(days=90)).replace(hour=12, minute=0, second=0, microsecond=0)
    customers = [f"customer-with-a-long-name-{n}" for n in range(9)]  # seven series, "other", a legend of many lines
    _insert(site, [row(_utc_text(first + dt.timedelta(days=n % 7, minutes=n)), "gpt-4o", f"0.{n + 1}", 100,
                       customer=name) for n, name in enumerate(customers)])
    last = first + dt.timedelta(days=6)
    errors: list[str] = []
    context, page = _context_page(browser, errors, viewport={"width": 390, "height": 844}, timezone_id="UTC",
                                  is_mobile=True, has_touch=True, device_scale_factor=3)
    try:
        sign_in(page, site)
        page.goto(f"{site['url']}/?range=custom&from={first:%Y-%m-%d}&to={last:%Y-%m-%d}&stack=customer")
        wait_until_drawn(page)
        found = page.evaluate(_PHONE)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        page.locator(".chart").screenshot(path=str(ARTIFACTS / "dashboard-phone-chart.png"))
        assert found["series"] == 8 and page.get_attribute("#total-spend", "data-value") == "4.5"
        assert [i["value"] for i in found["inputs"]] == [f"{first:%Y-%m-%d}", f"{last:%Y-%m-%d}"]  # the period shown
        for sizes in found["inputs"]:  # the whole date, not "mm/dd/yyy"
            assert sizes["width"] >= sizes["needs"] - 0.5, found
        assert found["plot"] >= 0.2 * found["height"], found  # the bars, not a 50 px strip under the legend
        assert found["scrollWidth"] <= found["viewport"], found
    finally:
        context.close()
    assert errors == [], f"console errors: {errors}"


def test_recent_calls_show_units_and_unmetered_calls_are_named_a_gap(page, site):
    stamp = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat()
    speech = row(stamp, "tts-1", "0.002565", 80, customer="speaker")
    speech.update(endpoint="/v1/audio/speech", usage_source="counted", characters=171)
    unmetered = row(stamp, None, None, 60, customer="varier", usage="unmetered")
    unmetered.update(endpoint="/v1/images/variations")
    tools = row(stamp, "gpt-4o-2024-08-06", "0.0381", 900, customer="analyst")
    tools.update(endpoint="/v1/responses", file_search_calls=2, code_executions=3, containers=1)
    drawn = row(stamp, "gpt-5-2025-08-07", None, 900, customer="illustrator")
    drawn.update(endpoint="/v1/responses", image_generation_calls=2)
    advised = row(stamp, "claude-sonnet-4-6", None, 900, customer="advised", provider="anthropic")
    advised.update(endpoint="/v1/messages", advisor_calls=1)
    with writing(home_dir.db_path(site["home"])) as con:  # the proxy holds the file only while it flushes
        call_rows.insert(con, [speech, unmetered, tools, drawn, advised])
    sign_in(page, site)
    page.wait_for_selector("#recent td:text('tts-1 · 171 characters')", timeout=10_000)
    page.wait_for_selector("#recent td:text('gpt-4o-2024-08-06 · 2 file searches · 3 code runs · 1 container')",
                           timeout=10_000)
    page.wait_for_selector("#recent td:text('gpt-5-2025-08-07 · 2 images by a tool')", timeout=10_000)
    page.wait_for_selector("#recent td:text('claude-sonnet-4-6 · 1 advisor call')", timeout=10_000)
    assert "went to endpoints the provider bills and AiSpendTrack does not meter" in page.inner_text("#warnings")


def test_the_page_starts_a_day_where_the_server_does_in_every_zone(page, site):
    """A midnight the clocks skip (Havana, Santiago on the day DST starts) was read an hour early: the
    page's "today" and a custom range took in the previous day's last hour, where the CLI and API
    (Python, fold=0) start the day at the change. A time that happens twice is its first."""
    from zoneinfo import ZoneInfo
    sign_in(page, site)
    page.goto(site["url"] + "/?range=7d")
    wait_until_drawn(page)
    cases = [("America/Havana", 2026, 3, 8, 0), ("America/Santiago", 2026, 9, 6, 0), ("America/Havana", 2026, 11, 1, 0),
             ("America/Los_Angeles", 2026, 3, 8, 2), ("America/Los_Angeles", 2026, 11, 1, 1),
             ("Australia/Lord_Howe", 2026, 10, 4, 2), ("Asia/Kathmandu", 2026, 6, 1, 0),
             ("Pacific/Kiritimati", 2026, 1, 1, 0)]
    shown = page.evaluate("(cases) => cases.map(([tz, y, m, d, h]) => new Date(zoned(y, m, d, tz, h)).toISOString())",
                          cases)
    assert shown == [dt.datetime(y, m, d, h, tzinfo=ZoneInfo(tz)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                     for tz, y, m, d, h in cases]


def test_the_page_shows_what_the_proxy_added_at_p50_and_p99(page, site):
    """Calls stored before the proxy measured itself (proxy_us NULL) are left out, not shown as 0 µs."""
    rows = [_recent(3, "gpt-4o-mini", "0.00", 100, customer="added-time") for _ in range(4)]
    _insert(site, rows + [{**_recent(3, "gpt-4o-mini", "0.00", 100, customer="added-time"), "proxy_us": us}
                          for us in (40, 60, 2_000)])
    sign_in(page, site)
    page.goto(site["url"] + "/?range=7d&customer=added-time")
    wait_until_drawn(page)
    assert page.get_attribute("#total-calls", "data-value") == "7"
    assert page.inner_text("#total-added") == "60 µs / 2.0 ms"  # p99 of 40, 60, 2000: 60 + 0.98 * 1940 = 1961 µs


_TOOLTIPS = """() => {
  const chart = Chart.getChart(document.getElementById("chart"));
  const label = chart.options.plugins.tooltip.callbacks.label;
  return chart.data.datasets.flatMap((d) => d.data.map((y, i) => [chart.data.labels[i],
    label({ dataset: d, dataIndex: i, parsed: { y } })]));
}"""


def test_a_past_custom_period_bounds_its_recent_calls_and_an_unpriced_bar_says_so(page, site):
    """Weeks back, where no other test puts calls: a day whose only calls have no price reads
    "unpriced" in the chart (it read $0.00), and the recent calls end with the period (today's
    showed up in it)."""
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=100)).replace(hour=12, minute=0, second=0, microsecond=0)
    inside = [row(_utc_text(start), "mystery-llm", None, 100, customer="past", usage="reported"),
              row(_utc_text(start + dt.timedelta(minutes=5)), "mystery-llm", None, 100, customer="past"),
              row(_utc_text(start + dt.timedelta(days=1)), "gpt-4o", "0.25", 100, customer="past")]
    _insert(site, inside)
    sign_in(page, site)
    first, last = start.date(), (start + dt.timedelta(days=1)).date()
    page.goto(f"{site['url']}/?range=custom&from={first}&to={last}&tz=UTC")
    wait_until_drawn(page)
    ids = [tr.get_attribute("data-id") for tr in page.query_selector_all("#recent tbody tr[data-id]")]
    assert sorted(ids) == sorted(str(r["id"]) for r in inside)
    tooltips = [t for t in page.evaluate(_TOOLTIPS) if not t[1].endswith(": $0.00")]
    assert sorted(tooltips) == [[f"{first} 12:00", "mystery-llm: unpriced (2 calls)"],  # two days: by hour
                                [f"{last} 12:00", "gpt-4o: $0.25"]]


def test_the_chart_stacked_by_key_names_the_keys_as_the_tables_do(page, site):
    [key] = [k for k in json.loads(run_cli(site["home"], "keys", "list", "--json")) if k["id"] == site["proxy"].key_id]
    sign_in(page, site)
    page.goto(f"{site['url']}/?range=30d&stack=key")
    wait_until_drawn(page)
    labels = page.evaluate("() => Chart.getChart(document.getElementById('chart')).data.datasets.map((d) => d.label)")
    assert key["name"] in labels and str(key["id"]) not in labels
