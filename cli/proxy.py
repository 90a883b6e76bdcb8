"""``aispendtrack proxy``: mitmproxy in reverse mode with the AiSpendTrack addon, in-process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from addon import settings
from addon.core import ca
from addon.core import home as home_dir
from addon.core import keys as keygen
from addon.core.plans import DEFAULT_PLAN
from addon.core.store import keys as key_rows
from addon.core.store import writing

from .options import trusted_proxy_option
from .output import check_port_free

log = logging.getLogger("addon.stop")  # under "addon": its INFO lines are shown

if TYPE_CHECKING:
    from .workers import WebHandover


def _setting_flags(command):
    """One click option per proxy setting that has a flag (addon/settings.py), in table order."""
    for s in reversed(settings.SETTINGS):
        if s.flag is None:
            continue
        if s.type is bool:  # a flag turns the setting from its default to the other value
            command = click.option(s.flag, s.name, is_flag=True, default=False, help=s.flag_help or s.help)(command)
        elif s.type is int:
            command = click.option(s.flag, s.name, default=s.default, show_default=True, help=s.help,
                                   type=click.IntRange(s.minimum, s.maximum))(command)
        elif s.type is str:
            default = _CLI_DEFAULTS.get(s.name, s.default)
            command = click.option(s.flag, s.name, default=default, show_default=bool(default), help=s.help)(command)
        else:  # Sequence[str]
            command = click.option(s.flag, s.name, multiple=True, metavar=s.metavar, help=s.help)(command)
    return command


# The command names the provider it forwards OpenAI calls to; mitmdump takes its reverse target.
_CLI_DEFAULTS = {"openai_upstream": "https://api.openai.com"}


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--web-port", type=click.IntRange(1, 65535), help="Also serve the web app and API on this port.")
@click.option("--forward-port", type=click.IntRange(1, 65535),
              help="Also be a forward proxy (HTTPS_PROXY) on this port, metering the providers' hosts "
                   "(`aispendtrack ca` prints the client environment).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The private key of --tls-cert (PEM).")
@click.option("--upstream-ca", type=click.Path(exists=True, dir_okay=False),
              help="Verify providers against this CA bundle (PEM) instead of the public CAs.")
@click.option("--workers", type=click.IntRange(1, 64),
              help="Proxy processes accepting on the same ports, under one parent that restarts a dead one "
                   "(embedded: one more child owns the data file, the workers send it their rows). "
                   "Default: the host's cores (a container's CPU quota if fewer), at most 8; 1 keeps one process.")
@trusted_proxy_option
@_setting_flags
@click.pass_obj
def proxy(obj, host: str, port: int, web_port: int | None, forward_port: int | None, tls_cert: str | None,
          tls_key: str | None, upstream_ca: str | None, workers: int | None, trusted_proxies: tuple[str, ...],
          **values) -> None:
    """Run the metering proxy. Point your SDK's base_url at it."""
    from addon.core.store import shared

    from . import workers as worker_pool
    workers = workers or worker_pool.default_count()
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together.")
    if tls_cert and forward_port:
        raise click.UsageError("--forward-port cannot be combined with --tls-cert yet: mitmproxy would show the "
                               "--tls-cert certificate for the providers' hosts too.")
    try:
        home_dir.check_free(obj.home)
    except home_dir.HomeInUse as exc:
        raise click.ClickException(str(exc)) from None
    _check_ports_distinct({"--port": port, "--web-port": web_port, "--forward-port": forward_port,
                           "--metrics-port": values.get("metrics_port")})
    check_port_free(host, port, "--port")
    if web_port:
        check_port_free(host, web_port, "--web-port")
    if forward_port:
        check_port_free(host, forward_port, "--forward-port")
    if values.get("metrics_port"):
        check_port_free(values["metrics_host"], values["metrics_port"], "--metrics-port")
    _first_key(obj.db)
    owned = workers > 1 and shared.configured() is None  # a child owns the file (cli/embedded.py)
    if owned:
        from addon.core.store import connection
        connection.only_through_owner(obj.db)  # never opened here
    web = None
    if web_port:
        from web.server import serve_in_thread
        from web.sso_settings import SsoSettingsError
        from web.sso_settings import load as load_sso
        try:
            if owned:  # served by the owner, next to the data (see worker_pool.WebHandover)
                load_sso(obj.home)  # sso.toml (docs/sso.md): its error is said here, before anything starts
                web = worker_pool.WebHandover(host, web_port, trusted_proxies)
            else:
                serve_in_thread(obj.home, host, web_port, trusted_proxies)
        except SsoSettingsError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"Web and API on http://{host}:{web_port}")
    scheme = "https" if tls_cert else "http"
    click.echo(f"AiSpendTrack proxy on {scheme}://{host}:{port}  (data: {obj.home})")
    click.echo(f"  OpenAI:    OpenAI(base_url='{scheme}://{host}:{port}/v1', "
               "default_headers={'x-aispendtrack-key': ...})")
    click.echo(f"  Anthropic: Anthropic(base_url='{scheme}://{host}:{port}', "
               "default_headers={'x-aispendtrack-key': ...})")
    modes = [f"reverse:{values['openai_upstream']}@{port}"]
    if forward_port:
        modes.append(f"regular@{forward_port}")
        click.echo(f"  Forward:   HTTPS_PROXY=http://aispendtrack:ask_KEY@{host}:{forward_port}  "
                   "(and trust the CA: `aispendtrack ca`)")
    addon_options = _addon_options(values, home=str(obj.home), tls_only=bool(tls_cert), worker_dir="")
    # The CA the forward mode signs with lives in the data directory (addon/core/ca.py).
    mitm_options = dict(listen_host=host, listen_port=port, mode=modes, confdir=str(ca.ensure(obj.home).confdir))
    if tls_cert and tls_key:
        mitm_options["certs"] = [f"*={tls_pem(obj.home, tls_cert, tls_key)}"]
    if upstream_ca:
        mitm_options["ssl_verify_upstream_trusted_ca"] = upstream_ca
    if workers == 1:
        serve(mitm_options, addon_options)
        return
    click.echo(f"  Workers:   {workers} processes on each port")
    sys.exit(_run_workers(obj.home, workers, mitm_options, addon_options, f"{host}:{port}", web))


def _run_workers(home: Path, count: int, mitm_options: dict, addon_options: dict, listening: str,
                 web: WebHandover | None) -> int:
    """The parent of ``count`` workers (cli/workers.py): the data directory's lock and the metrics port."""
    from addon import metrics_port
    from addon.core.store import shared

    from .workers import Supervisor, log
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        lock = home_dir.claim(home, listening)  # held until this process ends
    except home_dir.HomeInUse as exc:  # another proxy took it since the check above
        raise click.ClickException(str(exc)) from None
    supervisor = Supervisor(count, home, mitm_options, addon_options, embedded=shared.configured() is None, web=web)
    server = None
    if addon_options["aispendtrack_metrics_port"]:
        try:
            server = metrics_port.serve(addon_options["aispendtrack_metrics_host"],
                                        addon_options["aispendtrack_metrics_port"])
        except OSError as exc:  # as a lone proxy: metrics are worth a log line, not the calls
            log.warning("cannot serve metrics on port %d (%s); calls are proxied and recorded all the same",
                      addon_options["aispendtrack_metrics_port"], exc.strerror or exc)
    try:
        return supervisor.run()
    finally:
        if server is not None:
            server.shutdown()
        os.close(lock)


def serve(mitm_options: dict, addon_options: dict, on_running=None) -> None:
    """One proxy process until SIGTERM or SIGINT: `aispendtrack proxy`, or one of its workers."""
    try:
        asyncio.run(_serve(mitm_options, addon_options, on_running))
    except Exception as exc:
        from mitmproxy import exceptions
        if isinstance(exc, exceptions.OptionsError):
            raise click.ClickException(str(exc)) from None
        raise


def _check_ports_distinct(ports: dict[str, int | None]) -> None:
    """Two servers on one port: the second would fail only after the first started, mid-startup."""
    seen: dict[int, str] = {}
    for flag, number in ports.items():
        if not number:
            continue
        if number in seen:
            raise click.UsageError(f"{seen[number]} and {flag} are both {number}; each server needs a port of "
                                   "its own.")
        seen[number] = flag


def _addon_options(values: dict, **others) -> dict:
    """The mitmproxy options for the flags given: a boolean flag is the setting's non-default value."""
    options = {}
    for s in settings.SETTINGS:
        if s.flag is None:
            value = others[s.name]
        elif s.type is bool:
            value = (not s.default) if values[s.name] else s.default
        elif s.type is str or s.type is int:
            value = values[s.name]
        else:
            value = list(values[s.name])
        options[s.option] = value
    return options


def _first_key(db) -> None:
    """A first start with no keys makes one, so a newcomer can call right away."""
    with writing(db) as con:
        if key_rows.count(con):
            return
    key_id, key = keygen.create(db, "default", DEFAULT_PLAN)
    click.echo(f"No keys yet, so created key {key_id} (default). It is shown only this once:\n\n    {key}\n")


def tls_pem(home, cert: str, key: str) -> str:
    """mitmproxy wants the certificate and its key in one PEM file: written private to the data dir."""
    path = home / "tls" / "listen.pem"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Path(key).read_bytes().rstrip() + b"\n" + Path(cert).read_bytes())
    return str(path)


# The mitmproxy addons this proxy uses: serving, TLS, the forward mode's block of public clients and
# its h2c refusal, Alt-Svc pointed back at the proxy, start-up errors. mitmdump adds some twenty more
# (playback, map and modify rules, sticky cookies and auth, saving flows, the onboarding app, the
# stdin reader, ...), features nobody can switch on here, and mitmproxy offers every hook of every
# request to each of them: measured in docs/benchmarks.md ("mitmproxy's own cost per request").
MITMPROXY_ADDONS: frozenset[str] | None = frozenset({
    "core", "block", "disableh2c", "proxyserver", "dnsresolver", "nextlayer", "tlsconfig", "updatealtsvc",
    "stripdnshttpsrecords"})
# Lazy: the upstream is chosen per request (OpenAI or Anthropic), not per client connection.
MITMPROXY_OPTIONS: dict = {"connection_strategy": "lazy", "termlog_verbosity": "info"}


def _master(opts):
    """mitmdump's master with only the addons of MITMPROXY_ADDONS (None: all of mitmdump's)."""
    from mitmproxy import addons
    from mitmproxy.addons import errorcheck
    from mitmproxy.master import Master

    every = {type(a).__name__.lower(): a for a in addons.default_addons()}
    if missing := (MITMPROXY_ADDONS or set()) - every.keys():  # a mitmproxy that renamed one: fail loudly
        raise RuntimeError(f"mitmproxy has no addon {', '.join(sorted(missing))}")
    master = Master(opts, with_termlog=True)
    master.addons.add(*(a for name, a in every.items() if MITMPROXY_ADDONS is None or name in MITMPROXY_ADDONS),
                      errorcheck.ErrorCheck())
    return master


class _Stop:
    """SIGTERM or SIGINT: stop accepting (a load balancer's health check fails, and the kernel sends
    a worker's new connections to the others), give the calls under way up to --drain-s to finish,
    then stop, recording those still open as cut. They were all cut at once: clients got a reset
    for a call the provider went on to bill. A second signal stops at once.

    Under way: requests whose headers came (their body may still be arriving), calls forwarded, and
    answers not yet handed to the kernel (mitmproxy runs the response hook before it writes a body:
    an 8 MiB answer to a slow reader was cut, its row saying completed). A request begun on a kept
    connection once stopping is answered 503 (ConnectionBounds): forwarded, it was billed, then cut.
    Not seen: an HTTP/2 answer mitmproxy holds back for the client's flow-control window (in its h2
    connection, not the transport), which a slow HTTP/2 reader may still be cut short of."""

    def __init__(self, master, opts) -> None:
        self.master, self.opts = master, opts
        self.draining: asyncio.Task | None = None

    def asked(self) -> None:
        try:
            if self.draining is not None:  # the second signal
                self._cut_connections()
            elif self.opts.aispendtrack_drain_s > 0 and (under_way := self._under_way()):
                self._start_drain(under_way)
                return
        except Exception:  # mitmproxy's internals read here changed shape: stop, as before the drain
            log.exception("could not drain the calls under way; stopping now")
        self.master.shutdown()

    def _start_drain(self, under_way: int) -> None:
        seconds = self.opts.aispendtrack_drain_s
        log.info("stopping: no new connections; waiting up to %d s for %d calls under way (again to stop at once)",
                 seconds, under_way)
        bounds = self.master.addons.get("connectionbounds")
        if bounds is not None:
            bounds.stopping = True
        self.opts.update(server=False)  # the listening sockets close; open connections go on
        self.draining = asyncio.get_running_loop().create_task(self._drain(seconds))

    async def _drain(self, seconds: float) -> None:
        try:
            deadline, quiet = time.monotonic() + seconds, 0
            # Twice idle in a row: a response hook's bytes are written a moment after it ran.
            while quiet < 2 and time.monotonic() < deadline:
                quiet = 0 if self._under_way() else quiet + 1
                await asyncio.sleep(0.05)
            self._cut_connections()
            await asyncio.sleep(0.1)  # their error hooks run: each call's row says it was cut
        except Exception:
            log.exception("could not drain the calls under way; stopping now")
        finally:
            self.master.shutdown()

    def _under_way(self) -> int:
        addon, bounds = self.master.addons.get("aispendtrack"), self.master.addons.get("connectionbounds")
        # Bytes unsent only to a client just answered: a tunnel to another host, or a websocket, may
        # keep some buffered for as long as it lives.
        answered = bounds.answered if bounds is not None else set()
        # The requests under way include every call forwarded (both end at the response or error
        # hook): the larger of the two, not their sum, which counted each forwarded call twice.
        return (max(addon.calls_in_flight() if addon is not None else 0,
                    bounds.requests_under_way() if bounds is not None else 0)
                + sum(1 for client, transport in _client_transports(self.master)
                      if client in answered and transport.get_write_buffer_size()))

    def _cut_connections(self) -> None:
        """Every client connection closed before the shutdown: mitmproxy goes on serving them while the
        addons' done hooks run, so a call finishing then reached the client whole after its row had
        been stored as cut (and, at $0.00002 estimated, for a call the provider billed)."""
        addon = self.master.addons.get("aispendtrack")
        if addon is not None:
            addon.state.cutting = True  # the calls' rows say the proxy stopped, not that their clients left
        for _, transport in _client_transports(self.master):
            transport.abort()


def _client_transports(master) -> list[tuple[str, asyncio.WriteTransport]]:
    """(client id, asyncio transport) of the TCP client connections mitmproxy serves (its proxyserver's
    handlers); a UDP one (QUIC) has a stream of mitmproxy_rs instead, no transport."""
    server = master.addons.get("proxyserver")
    found = []
    for handler in list(getattr(server, "connections", {}).values()):
        io = handler.transports.get(handler.client)
        transport = getattr(io.writer, "transport", None) if io is not None and io.writer is not None else None
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            found.append((handler.client.id, transport))
    return found


class _Running:
    """Calls back once every addon's `running` hook has run: the proxy listens and serves."""

    def __init__(self, callback) -> None:
        self.callback = callback

    def running(self) -> None:
        from mitmproxy import ctx

        # An addon that failed its start logged an error, and mitmproxy exits once the hooks have run:
        # not a process that serves (the parent said "serves in place of the one that died" of it).
        check = ctx.master.addons.get("errorcheck")
        if check is not None and check.logger.has_errored:
            return
        self.callback()


async def _serve(mitm_options: dict, addon_options: dict, on_running=None) -> None:
    from mitmproxy.options import Options

    from addon.aispendtrack import make_addons

    opts = Options(**mitm_options)
    master = _master(opts)
    opts.update(**MITMPROXY_OPTIONS)
    master.addons.add(*make_addons())
    if on_running is not None:
        master.addons.add(_Running(on_running))
    opts.update(**addon_options)
    # mitmproxy listens before its addons' `running` hooks, and its TLS addon loads its certificate
    # store only there; a request in between (a health probe, an eager client) made that addon fail,
    # and mitmproxy exits on any error logged during start-up, resetting the calls in flight.
    master.addons.get("tlsconfig").configure({"confdir"})
    loop = asyncio.get_running_loop()
    stop = _Stop(master, opts)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.asked)
    logging.getLogger("addon").setLevel(logging.INFO)
    logging.getLogger("pricing").setLevel(logging.INFO)  # "reloaded price overrides ..."
    logging.getLogger("aispendtrack.web").setLevel(logging.INFO)  # --web-port's access lines
    await master.run()
    # Rows are flushed by now. Connections still open (SDK keep-alive) are cancelled as the loop
    # closes, and asyncio would print a traceback for each; that is the normal end, not an error.
    loop.set_exception_handler(_ignore_cancellation)


def _ignore_cancellation(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)
