"""``aispendtrack proxy``: mitmproxy in reverse mode with the AiSpendTrack addon, in-process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import click

from addon.core.store import keys as key_rows
from addon.core.store import writing

from .keys import create_key
from .web import serve_in_thread


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--openai-upstream", default="https://api.openai.com", show_default=True,
              help="Where OpenAI calls go.")
@click.option("--anthropic-upstream", default="https://api.anthropic.com", show_default=True,
              help="Where Anthropic calls go.")
@click.option("--upstream", "upstreams", multiple=True, metavar="NAME=URL",
              help="Another provider's base URL, e.g. azure=https://NAME.openai.azure.com (repeatable).")
@click.option("--flush-ms", default=1000, show_default=True, type=click.IntRange(10, 60_000),
              help="How often rows are written to the database.")
@click.option("--web-port", type=click.IntRange(1, 65535), help="Also serve the web app and API on this port.")
@click.option("--alert-interval", default=60, show_default=True, type=click.IntRange(1, 3600),
              help="Seconds between evaluations of budgets, quota warnings and spikes.")
@click.option("--purge-interval", default=86_400, show_default=True, type=click.IntRange(1),
              help="Seconds between purges of calls past their plan's retention (the first comes at start-up).")
@click.option("--upstream-timeout", default=600, show_default=True, type=click.IntRange(1, 86_400),
              help="Seconds to wait for a provider's response headers before answering 504.")
@click.option("--auth-failures-per-minute", default=30, show_default=True, type=click.IntRange(0),
              help="Wrong keys allowed per client address and minute before it gets 429s (0: no limit).")
@click.option("--no-usage-injection", "no_usage_injection", is_flag=True,
              help="Do not ask for usage on chat streams whose client did not; such streams are then estimated.")
@click.option("--max-connections", default=1024, show_default=True, type=click.IntRange(1),
              help="Client connections served at once; more are closed at once.")
@click.option("--client-timeout", default=60, show_default=True, type=click.IntRange(1, 3600),
              help="Seconds a client may take to send a request's headers, or stay idle between requests.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The private key of --tls-cert (PEM).")
@click.option("--upstream-ca", type=click.Path(exists=True, dir_okay=False),
              help="Verify providers against this CA bundle (PEM) instead of the public CAs.")
@click.pass_obj
def proxy(obj, host: str, port: int, openai_upstream: str, anthropic_upstream: str, upstreams: tuple[str, ...],
          flush_ms: int, web_port: int | None, alert_interval: int, purge_interval: int, upstream_timeout: int,
          auth_failures_per_minute: int, no_usage_injection: bool, max_connections: int, client_timeout: int, tls_cert: str | None,
          tls_key: str | None, upstream_ca: str | None) -> None:
    """Run the metering proxy. Point your SDK's base_url at it."""
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together.")
    _first_key(obj.db)
    if web_port:
        serve_in_thread(obj.home, host, web_port)
        click.echo(f"Web and API on http://{host}:{web_port}")
    scheme = "https" if tls_cert else "http"
    click.echo(f"AiSpendTrack proxy on {scheme}://{host}:{port}  (data: {obj.home})")
    click.echo(f"  OpenAI:    OpenAI(base_url='{scheme}://{host}:{port}/v1', default_headers={{'x-aispendtrack-key': ...}})")
    click.echo(f"  Anthropic: Anthropic(base_url='{scheme}://{host}:{port}', default_headers={{'x-aispendtrack-key': ...}})")
    addon_options = dict(
        aispendtrack_home=str(obj.home), aispendtrack_openai_upstream=openai_upstream,
        aispendtrack_anthropic_upstream=anthropic_upstream, aispendtrack_upstreams=list(upstreams),
        aispendtrack_flush_ms=flush_ms, aispendtrack_alert_interval_s=alert_interval,
        aispendtrack_upstream_timeout_s=upstream_timeout, aispendtrack_purge_interval_s=purge_interval,
        aispendtrack_auth_failures_per_minute=auth_failures_per_minute,
        aispendtrack_inject_usage=not no_usage_injection, aispendtrack_max_connections=max_connections, aispendtrack_client_timeout_s=client_timeout,
        aispendtrack_tls_only=bool(tls_cert))
    mitm_options = dict(listen_host=host, listen_port=port, mode=[f"reverse:{openai_upstream}"])
    if tls_cert:
        mitm_options["certs"] = [f"*={tls_pem(obj.home, tls_cert, tls_key)}"]
    if upstream_ca:
        mitm_options["ssl_verify_upstream_trusted_ca"] = upstream_ca
    try:
        asyncio.run(_serve(mitm_options, addon_options))
    except Exception as exc:
        from mitmproxy import exceptions
        if isinstance(exc, exceptions.OptionsError):
            raise click.ClickException(str(exc)) from None
        raise


def _first_key(db) -> None:
    """A first start with no keys makes one, so a newcomer can call right away."""
    with writing(db) as con:
        if key_rows.count(con):
            return
    key_id, key = create_key(db, "default")
    click.echo(f"No keys yet, so created key {key_id} (default). It is shown only this once:\n\n    {key}\n")


def tls_pem(home, cert: str, key: str) -> str:
    """mitmproxy wants the certificate and its key in one PEM file: written private to the data dir."""
    path = home / "tls" / "listen.pem"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Path(key).read_bytes().rstrip() + b"\n" + Path(cert).read_bytes())
    return str(path)


async def _serve(mitm_options: dict, addon_options: dict) -> None:
    from mitmproxy.options import Options
    from mitmproxy.tools.dump import DumpMaster

    from addon.aispendtrack import AiSpendTrack
    from addon.bounds import ConnectionBounds

    opts = Options(**mitm_options)
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    # Lazy: the upstream is chosen per request (OpenAI or Anthropic), not per client connection.
    opts.update(connection_strategy="lazy", termlog_verbosity="info")
    master.addons.add(ConnectionBounds(), AiSpendTrack())
    opts.update(**addon_options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    logging.getLogger("addon").setLevel(logging.INFO)
    await master.run()
    # Rows are flushed by now. Connections still open (SDK keep-alive) are cancelled as the loop
    # closes, and asyncio would print a traceback for each; that is the normal end, not an error.
    loop.set_exception_handler(_ignore_cancellation)


def _ignore_cancellation(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)
