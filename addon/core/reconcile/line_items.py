"""The provider's billed line items beside our rows, per kind of spend (``--by line-item``).

A cost API names its line items in words ("gpt-4o-2024-08-06, input", "web search tool calls",
"fine-tuning training", "vector store storage"); each is sorted into a kind of spend by the words
in ``SPEND``, first match wins. Our rows are sorted by their endpoint and service tier. Per kind,
the billed sum beside ours says which kind of spend is missing. Some kinds no proxy can ever see
(training a fine-tuned model, storage billed per GB-day): they are labelled so, never a gap.
Anthropic's cost types (``tokens``, ``web_search``, ``code_execution``) and descriptions read
the same way.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from pricing import PriceBook
from pricing.usage import TOOL_FIELDS, TokenUsage

NOT_VISIBLE = "not visible to a proxy"
# (kind, whether calls through a proxy can carry it, words of the line item that say so)
SPEND: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("fine-tuning training", False, ("training",)),
    ("storage", False, ("storage", "gb-day", "gb day")),
    ("batch", True, ("batch",)),
    ("tools", True, ("web search", "file search", "code interpreter", "container", "tool", "web fetch",
                     "code execution", "grounding")),
    ("images", True, ("image", "dall-e")),
    ("audio", True, ("audio", "whisper", "tts", "transcri", "speech", "realtime")),
    ("model calls", True, ()),  # everything else: tokens of a model, in or out
)
_CENT_FRACTION = Decimal("0.000001")  # differences below a millionth of a dollar are float noise


def kind_of_line_item(name: str) -> tuple[str, bool]:
    text = name.lower().replace("_", " ")  # Anthropic's cost types: web_search, code_execution
    for kind, visible, words in SPEND:
        if not words or any(word in text for word in words):
            return kind, visible
    raise AssertionError("unreachable: the last kind matches everything")


def kind_of_row(endpoint: str, service_tier: str | None) -> str:
    """The kind of spend one of our rows is (from its endpoint and the tier that served it)."""
    if "/batches" in endpoint or service_tier == "batch":
        return "batch"
    if "/images/" in endpoint:
        return "images"
    if "/audio/" in endpoint or "/realtime" in endpoint:
        return "audio"
    return "model calls"


def price_tools(ours: list[dict], book: PriceBook, provider: str, at: dt.datetime) -> None:
    """Sets each of our lines' ``tool_cost_usd``: the part of its cost that its server-side tools
    added (the provider bills them as line items of their own: "web search tool calls", ...)."""
    for row in ours:  # an unpriced call (pricing.UNKNOWN_FEES: the image tool, a guardrail) adds nothing
        usage = TokenUsage(**{name: int(row.get(name) or 0) for name in TOOL_FIELDS})
        if usage.has_tools and row["model"] and row["cost_usd"] is not None:
            row["tool_cost_usd"] = book.tool_fees(usage, provider, row["model"], at, row.get("service_tier"))


def compare(billed: dict[str, Decimal], ours: list[dict], tolerance: float = 0.0) -> list[dict]:
    """One line per kind of spend on either side: the line items in it, billed beside ours."""
    lines: dict[str, dict] = {}
    for kind, visible, _ in SPEND:
        lines[kind] = {"kind": kind, "line_items": [], "visible": visible, "ours_calls": 0,
                       "ours_cost_usd": Decimal(0), "billed_usd": Decimal(0)}
    for name, value in sorted(billed.items()):
        kind, _ = kind_of_line_item(name)
        lines[kind]["line_items"].append(name)
        lines[kind]["billed_usd"] += value
    for row in ours:
        into = lines[kind_of_row(row["endpoint"], row.get("service_tier"))]
        tools = Decimal(row.get("tool_cost_usd") or 0)
        into["ours_calls"] += int(row["calls"])
        into["ours_cost_usd"] += Decimal(row["cost_usd"] or 0) - tools
        if tools:  # the calls are counted with their kind; their tools' fees with the tools
            lines["tools"]["ours_cost_usd"] += tools
    found = [line for line in lines.values() if line["line_items"] or line["ours_calls"] or line["ours_cost_usd"]]
    found.sort(key=lambda line: (not line["visible"], line["kind"] != "model calls"))  # the bulk first
    for line in found:
        line["line_items"] = "; ".join(line["line_items"])
        line["difference_usd"] = line["billed_usd"] - line["ours_cost_usd"]
        line["status"] = _status(line, tolerance)
    return found


def total(lines: list[dict]) -> dict:
    """The sums; the difference counts only what a proxy can see."""
    seen = [line for line in lines if line["visible"]]
    ours = sum((x["ours_cost_usd"] for x in lines), Decimal(0))
    billed = sum((x["billed_usd"] for x in lines), Decimal(0))
    difference = sum((x["difference_usd"] for x in seen), Decimal(0))
    return {"kind": "TOTAL", "line_items": "", "visible": None, "ours_calls": sum(x["ours_calls"] for x in lines),
            "ours_cost_usd": ours, "billed_usd": billed, "difference_usd": difference,
            "status": "match" if all(x["status"] in ("match", NOT_VISIBLE) for x in lines) else "differs"}


def _status(line: dict, tolerance: float) -> str:
    if not line["visible"]:
        return NOT_VISIBLE
    difference, larger = line["difference_usd"], max(line["billed_usd"], line["ours_cost_usd"])
    if abs(difference) <= max(_CENT_FRACTION, Decimal(str(tolerance)) * larger):
        return "match"
    return "untracked" if difference > 0 else "over"
