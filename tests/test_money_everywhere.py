"""The same calls' money and JSON, written alike by the CLI, the API and the page (headless Chromium).

The rule is in addon/core/money.py (Python) and web/static/app.js ``money`` (the page); the JSON
dialect in addon/core/serialize.py. Here both formatters get the same values, and the same stored
calls are read through `aispendtrack report`/`calls`, /api/v1 and the page's tables.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import httpx
import pytest

from addon.core import home as home_dir
from addon.core.money import column_places, usd
from addon.core.store import calls as call_rows
from addon.core.store import writing
from addon.core.wording import percent

from .helpers import CHROMIUM, free_port, run_cli, start_proxy
from .helpers import report_row as row
from .test_web_page import page, sign_in  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")

# Amounts a user has met: a sum that must stay $0.05175, a column of $0.069 and $0.0833, $0, an
# unknown cost, sub-micro-dollar costs, a half that rounds up, thousands, a binary-unfriendly float.
VALUES = [0.05175, 0.069, 0.0833, 0.00575, 0, None, 0.000000075, 0.0000005, 1.0000005, 1234.5, 3, -0.25,
          0.1 + 0.2, 12345678.123456, 0.001852, 2.5e-06]


def _ts(minutes_ago: int) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)).replace(tzinfo=None).isoformat()


@pytest.fixture(scope="module")
def site(tmp_path_factory, upstream):
    home = tmp_path_factory.mktemp("money-home")
    nine = [row(_ts(20 + n), "gpt-4o", "0.00575", 100) for n in range(9)]  # $0.05175 in all
    with writing(home_dir.db_path(home)) as con:
        call_rows.insert(con, [*nine, row(_ts(10), "gpt-4.1", "0.069", 100), row(_ts(9), "o3", "0.0833", 100),
                               row(_ts(8), "gpt-4o-mini", "0", 50, status=500, usage="none"),
                               row(_ts(7), "acme-llm", None, 50)])
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    web_port = free_port()
    proxy = start_proxy(home, upstream.url, tmp_path_factory.mktemp("money-logs") / "proxy.log",
                        extra_args=("--web-port", str(web_port)))
    yield {"url": f"http://127.0.0.1:{web_port}", "admin": admin, "home": home}
    proxy.stop()


def _cli_column(table: str, name: str, heading: str) -> dict[str, str]:
    """``{first cell: the column's cell}`` of a CLI table (cells are two or more spaces apart)."""
    lines = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines() if line and not line.startswith("-")]
    index = lines[0].index(heading)
    return {cells[0]: cells[index] for cells in lines[1:] if len(cells) == len(lines[0]) and cells[0] != name}


def _page_cells(page, selector: str, column: int) -> list[str]:  # noqa: F811
    return page.eval_on_selector_all(f"{selector} tbody tr", f"rows => rows.map(r => r.cells[{column}].innerText)")


def test_the_same_calls_cost_the_same_in_the_cli_the_api_and_the_page(page, site):  # noqa: F811
    sign_in(page, site)

    # The two formatters, fed the same values (as the page gets them: JSON numbers).
    places = column_places(VALUES)
    python = [[usd(v) for v in VALUES], [usd(v, places) for v in VALUES]]
    javascript = page.evaluate("(values) => { const places = moneyPlaces(values); return ["
                               "values.map((v) => money(v)), values.map((v) => money(v, places))]; }", VALUES)
    assert javascript == python
    assert python[0][:6] == ["$0.05175", "$0.069", "$0.0833", "$0.00575", "$0.00", "unpriced"]
    assert python[0][6:9] == ["<$0.000001", "$0.000001", "$1.000001"]
    assert [usd(Decimal("0.051750000000000000")), usd(Decimal("0.000000"))] == ["$0.05175", "$0.00"]
    # Shares, alike (the CLI wrote 2% where the page wrote 1.8%), halves and binary near-halves included.
    shares = [0.018, 0.081, 0.1, 0.125, 0.0225, 0.00049, 0.0005, 0.99951, 1.0, 0.0, 1 / 3, 0.0995]
    assert page.evaluate("(shares) => shares.map((v) => pct(v))", shares) == [percent(v) for v in shares]
    assert [percent(v) for v in shares[:4]] == ["1.8%", "8.1%", "10%", "13%"]

    # The by-model table: the CLI's report and the page's, cell for cell.
    cli_report = _cli_column(run_cli(site["home"], "report", "--by", "model", "--since", "7d"), "TOTAL", "COST")
    page_models = page.eval_on_selector_all("#by-model tbody tr", "rows => rows.map(r => r.dataset.value)")
    page_report = dict(zip(page_models, _page_cells(page, "#by-model", 2)))
    assert cli_report == page_report == {"gpt-4o": "$0.05175", "o3": "$0.08330", "gpt-4.1": "$0.06900",
                                         "gpt-4o-mini": "$0.00000", "acme-llm": "unpriced"}

    # The calls, newest first: `aispendtrack calls` and the page's "Recent calls".
    cli_calls = run_cli(site["home"], "calls")
    cli_costs = [re.split(r"\s{2,}", line.strip())[-3] for line in cli_calls.splitlines()[1:]]
    assert cli_costs == _page_cells(page, "#recent", 6)
    assert cli_costs == ["unpriced", "$0.00000", "$0.08330", "$0.06900"] + ["$0.00575"] * 9

    # JSON: the CLI's and the API's answers are the same text, indentation and numbers alike.
    api = httpx.Client(base_url=site["url"] + "/api/v1", headers={"Authorization": f"Bearer {site['admin']}"})
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    cli_json = run_cli(site["home"], "report", "--by", "model", "--since", since, "--format", "json")
    assert api.get("/report", params={"by": "model", "since": since}).text == cli_json
    cli_calls_json = run_cli(site["home"], "calls", "--format", "json")
    api_calls = api.get("/calls", params={"limit": 20}).text
    assert json.loads(api_calls)["calls"] == json.loads(cli_calls_json)
    assert re.search(r'^  "calls": \[\n    \{\n      "id": ', api_calls, re.M)
    assert re.search(r'^\[\n  \{\n    "id": ', cli_calls_json)
    # Exports (files written in constant memory, one object a line) carry the same numbers.
    cli_export = run_cli(site["home"], "export", "--format", "json")
    api_export = api.get("/export", params={"format": "json"}).text
    by_id = lambda text: sorted(json.loads(text), key=lambda c: c["id"])  # noqa: E731
    # The calls' pages name each key (key_name); an export holds the stored columns only.
    paged = [{k: v for k, v in c.items() if k != "key_name"} for c in json.loads(cli_calls_json)]
    assert by_id(cli_export) == by_id(api_export) == sorted(paged, key=lambda c: c["id"])
    for text in (cli_json, cli_calls_json, api_calls, cli_export):
        assert re.search(r'"cost_usd": ?0\.0(0575|5175)\b', text)
        assert not re.search(r"\d\.\d*0{6,}\b", text), "money in its shortest form"
