"""``aispendtrack keys``: create, list and revoke AiSpendTrack keys."""

from __future__ import annotations

import json

import click

from addon import keys as keygen
from addon.store import keys as key_rows
from addon.store import reading, writing

from .output import emit, format_option


def create_key(db, name: str) -> tuple[int, str]:
    key = keygen.new_key()
    with writing(db) as con:
        key_id = key_rows.add(con, name, keygen.hash_key(key), keygen.display_prefix(key))
    return key_id, key


@click.group(invoke_without_command=True)
@click.pass_context
def keys(ctx: click.Context) -> None:
    """Manage the keys callers send in x-aispendtrack-key (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_keys)


@keys.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. backend or staging.")
@click.option("--json", "as_json", is_flag=True, help="Print {key, id, name} as JSON.")
@click.pass_obj
def create(obj, name: str, as_json: bool) -> None:
    """Create a key. It is printed once and stored only as a hash."""
    name = name.strip()
    if not name:
        raise click.BadParameter("must not be empty", param_hint="--name")
    key_id, key = create_key(obj.db, name)
    if as_json:
        click.echo(json.dumps({"key": key, "id": key_id, "name": name}))
        return
    click.echo(f"Created key {key_id} ({name}):\n\n    {key}\n")
    click.echo("Store it now: it is shown only once. Callers send it as the x-aispendtrack-key header.")


@keys.command("list")
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
def list_keys(obj, fmt: str = "table", as_json: bool = False) -> None:
    """List keys (never the keys themselves: only their first characters)."""
    with reading(obj.db) as con:
        rows = key_rows.all_keys(con)
    for row in rows:
        row["status"] = "revoked" if row["revoked_at"] else "active"
    emit(rows, "json" if as_json else fmt, [
        ("ID", lambda r: str(r["id"]), ">"), ("NAME", lambda r: r["name"], "<"),
        ("KEY", lambda r: r["prefix"] + "…", "<"), ("STATUS", lambda r: r["status"], "<"),
        ("CREATED", lambda r: r["created_at"].strftime("%Y-%m-%d %H:%M"), "<"),
    ])


@keys.command("revoke")
@click.argument("key_id", type=int)
@click.pass_obj
def revoke(obj, key_id: int) -> None:
    """Revoke a key; a running proxy refuses it within 5 seconds."""
    with writing(obj.db) as con:
        revoked_at = key_rows.revoke(con, key_id)
    if revoked_at is None:
        raise click.ClickException(f"No key with id {key_id}; see `aispendtrack keys list`.")
    click.echo(f"Revoked key {key_id} (at {revoked_at:%Y-%m-%d %H:%M:%S %Z}).")
