"""``aispendtrack web``: the JSON API (and report page) on its own port."""

from __future__ import annotations

import click

from .output import check_port_free


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8081, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.pass_obj
def web(obj, host: str, port: int) -> None:
    """Serve the report page at http://HOST:PORT/ and the JSON API at /api/v1 (docs/api.md)."""
    from web import create_app
    from web.server import BoundedServer

    check_port_free(host, port, "--port")
    server = BoundedServer(host, port, create_app(obj.home))
    click.echo(f"AiSpendTrack web on http://{host}:{port}  (data: {obj.home})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
