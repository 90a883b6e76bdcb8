"""``aispendtrack web``: the JSON API (and report page) on its own port."""

from __future__ import annotations

import logging
import sys

import click

from .options import trusted_proxy_option
from .output import check_port_free


def access_log() -> None:
    """The web port's access lines and refusal summaries on stderr, with the time."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    for name in ("aispendtrack.web", "addon.core.burstlog"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8081, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@trusted_proxy_option
@click.pass_obj
def web(obj, host: str, port: int, trusted_proxies: tuple[str, ...]) -> None:
    """Serve the report page at http://HOST:PORT/ and the JSON API at /api/v1 (docs/api.md)."""
    from addon.core.store.connection import refuse_if_migrated
    from web import create_app
    from web.server import WebServer

    check_port_free(host, port, "--port")
    refuse_if_migrated(obj.db)
    from web.sso_settings import SsoSettingsError
    try:
        app = create_app(obj.home, trusted_proxies=trusted_proxies)
    except SsoSettingsError as exc:  # sso.toml (docs/sso.md)
        raise click.ClickException(str(exc)) from None
    server = WebServer(host, port, app)
    access_log()
    click.echo(f"AiSpendTrack web on http://{host}:{port}  (data: {obj.home})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
