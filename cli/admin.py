"""``aispendtrack admin``: tokens for the JSON API and web page that see every key's calls, and encryption."""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

import click
import duckdb

from addon.core import audit
from addon.core import keys as keygen
from addon.core.redact import first_line
from addon.core.serialize import dumps
from addon.core.store import admin as admin_rows
from addon.core.store import compact, encryption, lake, reading, shared, sso_users, writing
from addon.core.store import sessions as session_rows
from addon.core.wording import plural

from .output import emit, format_option


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
        audit.record(con, "admin.create-token", f"admin:{token_id}", None, {"name": name})
    if as_json:
        click.echo(dumps({"token": token, "id": token_id, "name": name}))
        return
    click.echo(f"Created admin token {token_id} ({name}):\n\n    {token}\n")
    click.echo("Store it now: it is shown only once. Send it as `Authorization: Bearer <token>`.")


@admin.command("list-tokens")
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
def list_tokens(obj, fmt: str, as_json: bool) -> None:
    """Admin tokens: id, name, created, and whether revoked (the tokens themselves are never stored)."""
    with reading(obj.db) as con:
        rows = admin_rows.listing(con)
    for row in rows:
        row["status"] = "revoked" if row["revoked_at"] else "active"
    emit(rows, "json" if as_json else fmt, [
        ("ID", lambda r: str(r["id"]), ">"), ("NAME", lambda r: r["name"], "<"),
        ("STATUS", lambda r: r["status"], "<"),
        ("CREATED", lambda r: r["created_at"].strftime("%Y-%m-%d %H:%M"), "<"),
    ])


@admin.command("revoke-token")
@click.argument("token_id", type=int)
@click.pass_obj
def revoke_token(obj, token_id: int) -> None:
    """Revoke an admin token at once: the API refuses it and its page sessions end."""
    with writing(obj.db) as con:
        token_hash = admin_rows.revoke(con, token_id)
        if token_hash is None:
            known = any(row["id"] == token_id for row in admin_rows.listing(con))
            raise click.ClickException(f"Admin token {token_id} is already revoked." if known else
                                       f"No admin token {token_id}; see `aispendtrack admin list-tokens`.")
        ended = session_rows.end_for(con, token_hash)
        audit.record(con, "admin.revoke-token", f"admin:{token_id}", {"revoked": False},
                     {"revoked": True, "sessions_ended": ended})
    click.echo(f"Revoked admin token {token_id}; {ended} page session(s) ended.")


@admin.command("end-sso-sessions")
@click.argument("who")
@click.pass_obj
def end_sso_sessions(obj, who: str) -> None:
    """End the page sessions of a single sign-on user, named by e-mail or sub, at once (a session
    otherwise lasts 12 hours). Disable the user at the identity provider too: they could sign in again."""
    with writing(obj.db) as con:
        subs = sso_users.named(con, who)
        if not subs:
            raise click.ClickException(f"No single sign-on user with the e-mail or sub {who!r} has signed in.")
        ended = sum(session_rows.end_for(con, sub) for sub in subs)
        audit.record(con, "admin.end-sso-sessions", ", ".join(f"sso:{sub}" for sub in subs), None,
                     {"sessions_ended": ended})
    click.echo(f"Ended {plural(ended, 'page session')} of {who}. Disable them at the identity provider too, "
               "or they can sign in again.")


@admin.command("maintain")
@click.pass_obj
def maintain(obj) -> None:
    """Shared mode: run the lake's maintenance now (a proxy runs it every 5 minutes by itself)."""
    if shared.configured() is None:
        raise click.ClickException("Only the shared mode has a lake to maintain; the embedded file needs nothing.")
    with lake.Turn().mine() as mine:
        if not mine:
            raise click.ClickException("Another replica is running the periodic jobs right now; try again shortly.")
        with writing(obj.db) as con:
            lake.maintain(con, dt.datetime.now(dt.UTC))
            files = lake.data_files(con)
    click.echo(f"Lake maintained: inlined rows flushed, small files merged, snapshots older than "
               f"{lake.KEEP_SNAPSHOTS} expired and their files deleted; {files:,} data files of calls now.")


@admin.command("backup")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def backup(obj, target: Path) -> None:
    """Copy the database into a new file TARGET while the proxy runs (restore: docs/operations.md)."""
    if shared.configured() is not None:
        raise click.ClickException("In the shared mode the data is in PostgreSQL and the data path: back them up "
                                   "with pg_dump and a copy of the data path; see docs/operations.md.")
    target = target.absolute()  # a running proxy's process writes it, from its own working directory
    if not target.parent.is_dir():
        raise click.ClickException(f"{target.parent} is not a directory; create it first.")
    if target.exists() or target.with_name(target.name + ".wal").exists():
        raise click.ClickException(f"{target} exists; name a new file.")
    # Written under a name of its own, then linked to TARGET, which fails if something made TARGET
    # meanwhile: a failure removes only what this command wrote (it once removed another's TARGET).
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        try:
            with reading(obj.db) as con:
                size = compact.backup(con, partial)
        except duckdb.Error as exc:
            raise click.ClickException(f"could not back up to {target}: {first_line(exc)} (with a proxy running, "
                                       f"its process writes the copy: a place it may write to). Nothing was left "
                                       f"there.") from None
        try:
            os.link(partial, target)
        except FileExistsError:
            raise click.ClickException(f"{target} was made by something else meanwhile; name a new file.") from None
    finally:
        for path in (partial, partial.with_name(partial.name + ".wal")):
            path.unlink(missing_ok=True)
    click.echo(f"Backed up {obj.db} to {target} ({size:,} bytes).")


@admin.command("encrypt")
@click.pass_obj
def encrypt(obj) -> None:
    """Encrypt an existing database with the key in AISPENDTRACK_ENCRYPTION_KEY (stop the proxy first)."""
    if shared.configured() is not None:
        raise click.ClickException("Encryption with a key applies to the embedded database file. In the shared mode "
                                   "the data is in PostgreSQL and the data path: encrypt those at rest (the "
                                   "database's volume, the bucket's server-side encryption); see docs/deploy.md.")
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
    with writing(obj.db) as con:  # opened with the new key: the entry is in the encrypted file
        audit.record(con, "admin.encrypt", "config:database", {"encrypted": False}, {"encrypted": True})
    click.echo(f"Encrypted {obj.db}. Every aispendtrack process now needs {encryption.ENV_KEY} (or its file).")
