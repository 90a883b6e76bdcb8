"""Options shared by several commands: which calls (report, export, reprice); shared storage (all)."""

from __future__ import annotations

import functools
import os

import click

from addon.core.reports import ReportError, parse_selection
from addon.core.store import shared


def selection_options(command):
    """Adds --since/--until/--customer/--feature/--model/--key/--tz and passes ``selection``."""
    options = [
        click.option("--since", help="Start: 7d, 24h, today, 2026-11-01 or 2026-11-01T09:00 (in --tz)."),
        click.option("--until", help="End (exclusive), same forms as --since."),
        click.option("--customer", help="Only this x-customer-id."),
        click.option("--feature", help="Only this x-feature."),
        click.option("--model", help="Only this model (as recorded, e.g. gpt-4o-2024-08-06)."),
        click.option("--key", "key", help="Only this key id."),
        click.option("--tz", default="UTC", show_default=True,
                     help="Time zone for dates and day/month grouping, e.g. America/Los_Angeles."),
    ]

    @functools.wraps(command)
    def wrapper(*args, since, until, customer, feature, model, key, tz, **kwargs):
        try:
            selection = parse_selection(since=since, until=until, customer=customer, feature=feature,
                                        model=model, key=key, tz=tz)
        except ReportError as exc:
            raise click.UsageError(str(exc)) from None
        return command(*args, selection=selection, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _set_env(name: str):
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ[name] = value  # read by the store in this process and any it starts
    return callback


def add_storage_options(command: click.Command) -> None:
    """--catalog and --data-path on a command and every command of a group (shared mode,
    docs/deploy.md), defined once here. They set the environment variables the store reads, so
    they mean the same as those."""
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            add_storage_options(subcommand)
        return
    if any(param.name in ("catalog", "data_path") for param in command.params):
        return  # migrate-to: its --catalog is where to copy to; and a command is extended once
    command.params += [
        click.Option(["--catalog"], expose_value=False, is_eager=True, callback=_set_env(shared.ENV_CATALOG),
                     metavar="URL", help=f"Shared mode: the PostgreSQL catalog, postgresql://user@host:5432/db "
                                         f"[env {shared.ENV_CATALOG}]."),
        click.Option(["--data-path"], expose_value=False, is_eager=True, callback=_set_env(shared.ENV_DATA_PATH),
                     metavar="DIR|s3://...", help=f"Shared mode: where the lake's files go, needed when the "
                                                  f"catalog is first created [env {shared.ENV_DATA_PATH}]."),
    ]


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
