"""``aispendtrack migrate-to``: copy the embedded database into shared storage, to grow without losing history."""

from __future__ import annotations

import os

import click

from addon.core import home as home_dir
from addon.core.redact import hide_passwords
from addon.core.store import shared, transfer


@click.command("migrate-to")
@click.option("--catalog", required=True, metavar="URL",
              help="The shared catalog to copy into: postgresql://user@host:5432/db (an empty database).")
@click.option("--data-path", metavar="DIR|s3://...", help="Where the lake's files go (needed for a new catalog).")
@click.pass_obj
def migrate_to(obj, catalog: str, data_path: str | None) -> None:
    """Copy this data directory's database (keys, budgets, alerts, calls) into shared storage.

    Stop the proxy first. The database here is left as it was."""
    try:
        home_dir.check_free(obj.home)
    except home_dir.HomeInUse as exc:
        raise click.ClickException(f"Stop the proxy first: {exc}") from None
    if not obj.db.exists():
        raise click.ClickException(f"There is no database in {obj.home} to copy.")
    cfg = shared.SharedConfig(catalog, data_path)
    os.environ.pop(shared.ENV_CATALOG, None)  # the source is the embedded file, whatever the environment says
    con = shared.SharedConnection(cfg)
    try:
        counts = transfer.copy_embedded(obj.db, con)
    finally:
        con.close()
    click.echo(f"Copied {obj.db} into the shared storage at {cfg.where}: "
               + ", ".join(f"{n:,} {table.replace('_', ' ')}" for table, n in counts.items()) + ".")
    click.echo(f"Run every proxy and command with {shared.ENV_CATALOG}={hide_passwords(catalog)} (or --catalog) "
               f"from now on; this directory's database is no longer written.")
