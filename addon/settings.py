"""Every proxy setting, defined once: its name, type, default, bounds and help.

The mitmproxy options (``--set aispendtrack_<name>=...``) and the ``aispendtrack proxy`` flags
are both generated from this table, so they cannot drift apart::

    mitmdump -s addon/aispendtrack.py --set aispendtrack_flush_ms=500 ...
    aispendtrack proxy --flush-ms 500

Settings the CLI and the web app must agree on with the proxy (the quota time zone) are also
stored in the data directory's database (addon/core/config.py), so every process uses one value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mitmproxy import exceptions

from pricing.snapshots import DEFAULT_URL as DEFAULT_PRICES_URL


@dataclass(frozen=True)
class Setting:
    name: str                 # the mitmproxy option is "aispendtrack_" + name
    type: object              # int, str, bool or Sequence[str]
    default: object
    help: str
    flag: str | None          # the `aispendtrack proxy` flag; None: set another way (the help says how)
    minimum: int | None = None
    maximum: int | None = None
    owner: str = "AiSpendTrack"  # the addon class that declares the option
    metavar: str | None = None
    flag_help: str | None = None  # for a flag that turns a boolean setting off

    @property
    def option(self) -> str:
        return "aispendtrack_" + self.name


SETTINGS: tuple[Setting, ...] = (
    Setting("home", str, "", "Data directory (default: $AISPENDTRACK_HOME or ~/.aispendtrack); "
            "`aispendtrack --home DIR proxy` sets it.", None),
    Setting("openai_upstream", str, "", "Where OpenAI calls go; empty: the reverse-mode target "
            "(`aispendtrack proxy` uses https://api.openai.com).", "--openai-upstream", owner="Gate"),
    Setting("anthropic_upstream", str, "https://api.anthropic.com", "Where Anthropic calls go.",
            "--anthropic-upstream", owner="Gate"),
    Setting("upstreams", Sequence[str], [], "Another provider's base URL as NAME=URL, e.g. "
            "azure=https://NAME.openai.azure.com (repeatable; names in docs/providers.md).", "--upstream",
            metavar="NAME=URL", owner="Gate"),
    Setting("forward_hosts", Sequence[str], [], "Another host the forward mode (--forward-port) intercepts and "
            "meters as a provider's, as NAME=HOST, e.g. openai=llm-gateway.example.com ('*' for part of a label; "
            "repeatable). The providers' own hosts are known (docs/forward-proxy.md); every other host is "
            "tunnelled untouched.", "--forward-host", metavar="NAME=HOST", owner="Forward"),
    Setting("forward_local", bool, False, "Let forward-port clients reach this host's loopback and link-local "
            "addresses (127.0.0.0/8, ::1, 169.254.0.0/16 such as a cloud's metadata service), refused by default: "
            "the proxy's own metrics and web ports, and services meant for this host alone, listen there.",
            "--forward-local", owner="Forward"),
    Setting("quota_tz", str, "", "Time zone of the days and months that quotas and budgets count, e.g. "
            "America/New_York; stored in the database for the CLI and the web app too. Empty: the stored "
            "one (UTC until set).", "--quota-tz", owner="Quotas"),
    Setting("flush_ms", int, 1000, "How often rows are written to the database, in milliseconds.",
            "--flush-ms", 10, 60_000),
    Setting("alert_interval_s", int, 60, "Seconds between evaluations of budgets, quota warnings and spikes.",
            "--alert-interval", 1, 3600),
    Setting("purge_interval_s", int, 86_400, "Seconds between purges of calls past their plan's retention "
            "(the first comes at start-up).", "--purge-interval", 1),
    Setting("prices_url", str, DEFAULT_PRICES_URL, "Where the list prices are fetched from, on start and every "
            "--prices-refresh: genai-prices' published data.json, a mirror's URL or a file path (air-gapped "
            "installs), or `off` to fetch nothing (the data last fetched, else the installed package's, stays in "
            "use).", "--prices-url", metavar="URL"),
    Setting("prices_refresh_s", int, 21_600, "Seconds between fetches of --prices-url (a refused document leaves "
            "the last good data in use).", "--prices-refresh", 1, metavar="SECONDS"),
    Setting("upstream_timeout_s", int, 600, "Seconds to wait for a provider's response headers before "
            "answering 504.", "--upstream-timeout", 1, 86_400),
    Setting("auth_failures_per_minute", int, 30, "Wrong keys allowed per client address and minute before it "
            "gets 429s (0: no limit).", "--auth-failures-per-minute", 0, owner="Gate"),
    Setting("inject_usage", bool, True, "Ask for usage on chat streams whose client did not "
            "(stream_options.include_usage) and give the client the stream it asked for; off: such streams "
            "are estimated.", "--no-usage-injection",
            flag_help="Do not ask for usage on chat streams whose client did not; such streams are then estimated."),
    Setting("worker_dir", str, "", "Set by `aispendtrack proxy --workers N` in the embedded mode, for each worker: "
            "its own directory (its spill files). The worker then reaches aispendtrack_home's file only through its "
            "owner, the parent, and counts limits and budgets in the host's shared counts.", None),
    Setting("tls_only", bool, False, "Refuse calls that did not come over TLS (`aispendtrack proxy` sets it "
            "with --tls-cert).", None, owner="Gate"),
    Setting("metrics_port", int, 0, "Serve the proxy's metrics in the Prometheus format at /metrics on this "
            "port, without authentication, on --metrics-host; 0: not served (the web port serves them too, to "
            "admins).", "--metrics-port", 0, 65535),
    Setting("metrics_host", str, "127.0.0.1", "Address of --metrics-port, whatever --host is: its labels name key "
            "ids and customers, unauthenticated, so it leaves this machine only when set here.", "--metrics-host"),
    Setting("metrics_tags", bool, False, "Label the metrics by customer and feature too (each label keeps at most "
            "metrics_label_cap values).", "--metrics-tags"),
    Setting("metrics_label_cap", int, 100, "Distinct values a metric label keeps (model, key, customer, feature); "
            "later ones count as 'other', so a flood of names cannot exhaust Prometheus.", "--metrics-label-cap",
            1, 100_000),
    Setting("metrics_series_cap", int, 1000, "Distinct label combinations the metrics keep (provider, model, key, "
            "tags, status); a call with a new one past that counts under 'other' in every label, so a scrape stays "
            "small.", "--metrics-series-cap", 1, 1_000_000),
    Setting("max_connections", int, 0, "Client connections each proxy process serves at once (with --workers N, "
            "N times this for the host); 0: as many as the file descriptor limit allows (two each, after some for "
            "the database and logs), and never more than that. One more gets a 503 with retry-after.",
            "--max-connections", 0, owner="ConnectionBounds"),
    Setting("drain_s", int, 5, "On SIGTERM or Ctrl-C, seconds the calls in flight get to finish once the proxy "
            "stops accepting new ones; those still open then are recorded as cut (proxy_stopped). A second signal "
            "stops at once; 0: stop at once. Only `aispendtrack proxy` (a bare mitmdump stops as mitmproxy does).",
            "--drain-s", 0, 600),
    Setting("client_timeout_s", int, 60, "Seconds a client may take to send a whole request (headers and body), "
            "counted from connecting or from the previous response, so also the idle limit between requests; "
            "over HTTP/2, each stream's from its headers.", "--client-timeout", 1, 3600, owner="ConnectionBounds"),
)


def of(owner: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.owner == owner)


def add_options(loader, owner: str) -> None:
    """In an addon's ``load``: declare the options it owns."""
    for s in of(owner):
        loader.add_option(s.option, s.type, s.default, s.help)


def check(options, updated: set[str], owner: str) -> None:
    """In an addon's ``configure``: refuse a value outside its bounds, naming the option."""
    for s in of(owner):
        if s.option not in updated:
            continue
        value = getattr(options, s.option)
        if s.minimum is not None and value < s.minimum:
            raise exceptions.OptionsError(f"{s.option} must be at least {s.minimum}, got {value}.")
        if s.maximum is not None and value > s.maximum:
            raise exceptions.OptionsError(f"{s.option} must be at most {s.maximum}, got {value}.")
