"""Options shared by several commands: which calls (report, export, reprice, calls); shared storage (all)."""

from __future__ import annotations

import functools
import os

import click

from addon.core.reports import ReportError, parse_selection
from addon.core.store import shared
from addon.core.wording import plural


def selection_options(command):
    """Adds --since/--until/--customer/--feature/--model/--key/--team/--provider/--status/--errors/--tz and passes
    ``selection``; the filters combine with AND."""
    options = [
        click.option("--since", help="Start: 7d, 24h, today, 2026-11-01 or 2026-11-01T09:00 (in --tz)."),
        click.option("--until", help="End (exclusive), same forms as --since."),
        click.option("--customer", help="Only this x-customer-id."),
        click.option("--feature", help="Only this x-feature."),
        click.option("--model", help="Only this model (as recorded, e.g. gpt-4o-2024-08-06)."),
        click.option("--key", "key", help="Only this key: its id or its name (see `aispendtrack keys list`)."),
        click.option("--team", help="Only the calls of the keys now in this team (see `aispendtrack teams`)."),
        click.option("--provider", help="Only this provider, e.g. openai or anthropic."),
        click.option("--status", type=click.IntRange(100, 599), help="Only calls answered with this HTTP status."),
        click.option("--errors", is_flag=True, help="Only failed calls (an error status or no complete answer)."),
        click.option("--tz", default="UTC", show_default=True,
                     help="Time zone for dates and day/month grouping, e.g. America/Los_Angeles."),
    ]

    @functools.wraps(command)
    def wrapper(*args, since, until, customer, feature, model, key, team, provider, status, errors, tz, **kwargs):
        try:
            selection = parse_selection(since=since, until=until, customer=customer, feature=feature,
                                        model=model, key=_key_id(key), tz=tz, provider=provider, status=status,
                                        errors=errors, team=_team(team))
        except ReportError as exc:
            raise click.UsageError(str(exc)) from None
        return command(*args, selection=selection, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _key_id(key: str | None) -> str | None:
    """--key as given when it is the id of a key; a name becomes the id of the one key that has it.
    An id no key has is refused like an unknown name (it answered an empty report)."""
    if key is None:
        return key
    from addon.core.store import keys as key_rows
    from addon.core.store import reading
    with reading(click.get_current_context().obj.db) as con:
        if key.strip().isascii() and key.strip().isdigit():
            # (an id past MAX_ID is left to the selection's check, which names the range)
            if int(key) <= key_rows.MAX_ID and key_rows.get(con, int(key)) is None:
                raise click.BadParameter(f"no key {key.strip()}; see `aispendtrack keys list`.", param_hint="--key")
            return key
        ids = key_rows.ids_named(con, key)
    if not ids:
        raise click.BadParameter(f"no key named {key!r}; see `aispendtrack keys list`.", param_hint="--key")
    if len(ids) > 1:
        raise click.BadParameter(f"{plural(len(ids), 'key')} are named {key!r} (ids {', '.join(map(str, ids))}): "
                                 f"give the id.", param_hint="--key")
    return str(ids[0])


def _team(name: str | None) -> str | None:
    """--team as given, once a team has that name: a misspelt one is an error, not an empty report."""
    if name is None:
        return None
    from addon.core.store import reading
    from addon.core.store import teams as team_rows
    with reading(click.get_current_context().obj.db) as con:
        if team_rows.find(con, name) is None:
            raise click.BadParameter(f"no team named {name!r}; see `aispendtrack teams list`.", param_hint="--team")
    return name


def _set_env(name: str):
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ[name] = value  # read by the store in this process and any it starts
    return callback


def add_storage_options(command: click.Command) -> None:
    """--home (as before the command: `aispendtrack calls --home DIR` was "No such option"), and
    --catalog and --data-path (shared mode, docs/deploy.md) on a command and every command of a
    group, defined once here. The last two set the environment variables the store reads, so they
    mean the same as those."""
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            add_storage_options(subcommand)
        return
    if any(param.name == "home" for param in command.params):
        return  # a command is extended once
    command.params.append(click.Option(["--home"], expose_value=False, callback=_set_home,
                                       type=click.Path(file_okay=False), metavar="DIR",
                                       help="Data directory, as `aispendtrack --home DIR` before the command."))
    if any(param.name in ("catalog", "data_path") for param in command.params):
        return  # migrate-to: its --catalog is where to copy to
    command.params += [
        click.Option(["--catalog"], expose_value=False, is_eager=True, callback=_set_env(shared.ENV_CATALOG),
                     metavar="URL", help=f"Shared mode: the PostgreSQL catalog, postgresql://user@host:5432/db "
                                         f"[env {shared.ENV_CATALOG}]."),
        click.Option(["--data-path"], expose_value=False, is_eager=True, callback=_set_env(shared.ENV_DATA_PATH),
                     metavar="DIR|s3://...", help=f"Shared mode: where the lake's files go, needed when the "
                                                  f"catalog is first created [env {shared.ENV_DATA_PATH}]."),
    ]


def _set_home(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.obj.use(value)  # the group's Context (cli/main.py), resolved when the command runs


def _check_trusted_proxies(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    from web.security import trusted_networks
    try:
        trusted_networks(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return values


trusted_proxy_option = click.option(
    "--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS", callback=_check_trusted_proxies,
    help="A TLS-terminating proxy in front of the web port (an address or network, repeatable): its "
         "X-Forwarded-Proto is believed, so the session cookie is Secure behind it. From other peers the "
         "header is ignored.")
