"""``aispendtrack migrate-to``: copy the embedded database into shared storage, to grow without losing history."""

from __future__ import annotations

import datetime as dt
import os

import click

from addon.core import audit, config_files, notify
from addon.core import home as home_dir
from addon.core.redact import hide_passwords
from addon.core.store import config_files as stored_files
from addon.core.store import migrated, shared, transfer, writing
from pricing import PriceFileError


@click.command("migrate-to")
@click.option("--catalog", required=True, metavar="URL",
              help="The shared catalog to copy into: postgresql://user@host:5432/db (an empty database).")
@click.option("--data-path", metavar="DIR|s3://...", help="Where the lake's files go (needed for a new catalog).")
@click.pass_obj
def migrate_to(obj, catalog: str, data_path: str | None) -> None:
    """Copy this data directory's database (keys, budgets, alerts, calls), prices.toml and alerts.toml
    into shared storage.

    Stop the proxy first. The database here is left as it was, marked as migrated: commands that
    would write to it are refused from then on, naming the catalog."""
    try:
        home_dir.check_free(obj.home)
    except home_dir.HomeInUse as exc:
        raise click.ClickException(f"Stop the proxy first: {exc}") from None
    if not obj.db.exists():
        raise click.ClickException(f"There is no database in {obj.home} to copy.")
    cfg = shared.config(catalog, data_path)
    os.environ.pop(shared.ENV_CATALOG, None)  # the source is the embedded file, whatever the environment says
    files = _local_files(obj.home)
    con = shared.SharedConnection(cfg)
    try:
        counts = transfer.copy_embedded(obj.db, con)
        for found in files:
            stored_files.put(con, found.name, found.text or "", dt.datetime.now(dt.UTC))
        audit.record(con, "migrate-to", "catalog", None, {"from": str(obj.db), "copied": counts,
                                                          "files": [found.name for found in files]})
    finally:
        con.close()
    with writing(obj.db, migrated_away=True) as embedded:
        migrated.mark(embedded, obj.db, catalog, dt.datetime.now(dt.UTC))
    click.echo(f"Copied {obj.db} into the shared storage at {cfg.where}: "
               + ", ".join(f"{n:,} {table.replace('_', ' ')}" for table, n in counts.items())
               + "".join(f", {found.name}" for found in files) + ".")
    click.echo(f"Run every proxy and command with {shared.ENV_CATALOG}={hide_passwords(catalog)} (or --catalog) "
               f"from now on; this directory's database is no longer written (commands that would write "
               f"to it are refused).")


def _local_files(home) -> list[config_files.ConfigFile]:
    """prices.toml and alerts.toml of the data directory, checked before anything is copied."""
    found = [config_files.read(home, name) for name in (config_files.PRICES, config_files.ALERTS)]
    found = [f for f in found if f.text is not None]
    try:
        for f in found:
            if f.name == config_files.PRICES:
                config_files.price_file(f)
            else:
                config_files.channels(f)
    except (PriceFileError, notify.ChannelError) as exc:
        raise click.ClickException(f"{exc} Fix it first: migrate-to carries it into the shared store.") from None
    return found
