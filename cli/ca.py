"""``aispendtrack ca``: the forward mode's CA certificate, and the environment that trusts it."""

from __future__ import annotations

import click

from addon.core import ca as ca_files


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The proxy's address, as clients reach it.")
@click.option("--forward-port", default=8081, show_default=True, type=click.IntRange(1, 65535),
              help="The proxy's --forward-port.")
@click.pass_obj
def ca(obj, host: str, forward_port: int) -> None:
    """Print the forward proxy's CA certificate path and the environment to set."""
    found = ca_files.ensure(obj.home)
    click.echo(f"# CA certificate: {found.cert}")
    click.echo(f"# (public CAs plus it: {found.bundle}; the private key stays in {found.confdir}, 0600)")
    # The key as the password: botocore sends a proxy credential only when it has both parts.
    click.echo(f"export HTTPS_PROXY=http://aispendtrack:ask_KEY@{host}:{forward_port}  # your AiSpendTrack key")
    for name, value in ca_files.environment(found).items():
        click.echo(f"export {name}={value}")
    click.echo("export NODE_USE_ENV_PROXY=1  # Node 24 and later")
