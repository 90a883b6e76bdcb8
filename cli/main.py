"""``aispendtrack``: run the proxy, manage keys, see what calls cost.

    aispendtrack proxy --port 8080
    aispendtrack keys create --name backend
    aispendtrack calls --limit 20
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from addon.core import home as home_dir
from addon.core.redact import hide_passwords
from addon.core.store import StoreError

from . import (
    admin,
    alerts,
    budgets,
    calls,
    config,
    export,
    keys,
    lifecycle,
    migrate,
    prices,
    proxy,
    reconcile,
    report,
    reprice,
    web,
)
from .options import add_storage_options


@dataclass
class Context:
    home: Path

    @property
    def db(self) -> Path:
        return home_dir.db_path(self.home)


class _Cli(click.Group):
    """Turns the store's expected failures (file busy, encryption misconfigured, shared storage
    unreachable...) into one-line errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StoreError as exc:
            raise click.ClickException(hide_passwords(str(exc))) from None


@click.group(cls=_Cli)
@click.option("--home", "home", envvar=home_dir.ENV_VAR, type=click.Path(file_okay=False),
              help="Data directory [env AISPENDTRACK_HOME; default ~/.aispendtrack].")
@click.version_option(package_name="aispendtrack")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """AiSpendTrack: see where your LLM money goes."""
    ctx.obj = Context(home=home_dir.resolve(home))


cli.add_command(proxy.proxy)
cli.add_command(keys.keys)
cli.add_command(calls.calls)
cli.add_command(prices.prices)
cli.add_command(report.report)
cli.add_command(export.export)
cli.add_command(reprice.reprice)
cli.add_command(admin.admin)
cli.add_command(budgets.budgets)
cli.add_command(alerts.alerts)
cli.add_command(web.web)
cli.add_command(lifecycle.purge)
cli.add_command(lifecycle.gdpr)
cli.add_command(config.config)
cli.add_command(migrate.migrate_to)
cli.add_command(reconcile.reconcile)
add_storage_options(cli)
