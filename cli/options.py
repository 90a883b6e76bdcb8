"""Options shared by report, export and reprice: which calls (time range and filters)."""

from __future__ import annotations

import functools

import click

from addon.core.reports import ReportError, parse_selection


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
