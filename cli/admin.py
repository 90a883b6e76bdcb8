"""``aispendtrack admin``: tokens for the JSON API and web page that see every key's calls, and encryption."""

from __future__ import annotations

import json

import click
import duckdb

from addon import keys as keygen
from addon.store import compact, encryption
from addon.store import admin as admin_rows
from addon.store import writing


@click.group()
def admin() -> None:
    """Admin tokens (see all calls in the API and on the web page)."""


@admin.command("create-token")
@click.option("--name", default="admin", show_default=True, help="What the token is for.")
@click.option("--json", "as_json", is_flag=True, help="Print {token, id, name} as JSON.")
@click.pass_obj
def create_token(obj, name: str, as_json: bool) -> None:
    """Create an admin token. It is printed once and stored only as a hash."""
    token = keygen.new_admin_token()
    with writing(obj.db) as con:
        token_id = admin_rows.add(con, name, keygen.hash_key(token))
    if as_json:
        click.echo(json.dumps({"token": token, "id": token_id, "name": name}))
        return
    click.echo(f"Created admin token {token_id} ({name}):\n\n    {token}\n")
    click.echo("Store it now: it is shown only once. Send it as `Authorization: Bearer <token>`.")


@admin.command("encrypt")
@click.pass_obj
def encrypt(obj) -> None:
    """Encrypt an existing database with the key in AISPENDTRACK_ENCRYPTION_KEY (stop the proxy first)."""
    key = encryption.configured_key()
    if key is None:
        raise click.UsageError(f"Set {encryption.ENV_KEY} or {encryption.ENV_KEY_FILE} to the new key first.")
    if not obj.db.exists():
        raise click.ClickException(f"No database at {obj.db} yet; with the key set, it is created encrypted.")
    try:
        compact.encrypt(obj.db, key)
    except duckdb.IOException as exc:
        raise click.ClickException(f"Cannot take {obj.db} ({str(exc).splitlines()[0]}); stop the proxy and "
                                   f"other aispendtrack commands, then try again.") from None
    except duckdb.Error as exc:
        raise encryption.explain(exc, obj.db) from None
    click.echo(f"Encrypted {obj.db}. Every aispendtrack process now needs {encryption.ENV_KEY} (or its file).")
