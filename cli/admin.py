"""``aispendtrack admin``: tokens for the JSON API and web page that see every key's calls."""

from __future__ import annotations

import json

import click

from addon import keys as keygen
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
