"""``aispendtrack alerts``: the notification channels in alerts.toml, and what was sent.

In the shared mode alerts.toml is the deployment's copy in the shared store (``alerts import``)."""

from __future__ import annotations

import click
from click_default_group import DefaultGroup

from addon.core import audit, config_files, notify
from addon.core.store import alerts as alert_rows
from addon.core.store import reading, writing
from addon.core.wording import plural

from .imports import read_text, say_not_read
from .output import emit, format_option


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def alerts() -> None:
    """Alert channels (email, Slack, webhook) and their history (default: list)."""


def _channels(home) -> tuple[dict[str, notify.Channel], config_files.ConfigFile]:
    found = config_files.read(home, config_files.ALERTS)
    say_not_read(home)
    try:
        return config_files.channels(found), found
    except notify.ChannelError as exc:
        raise click.ClickException(str(exc)) from None


@alerts.command("init")
@click.option("--force", is_flag=True, help="Replace an existing alerts.toml.")
@click.pass_obj
def init(obj, force: bool) -> None:
    """Write a commented alerts.toml to the data directory, every channel type as an example."""
    path = obj.home / notify.FILE_NAME
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; edit it, or use --force to replace it with the example.")
    path.write_text(notify.EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    then = (f"`aispendtrack alerts import {path}` (the shared mode reads the deployment's copy)"
            if config_files.not_read(obj.home) else "`aispendtrack alerts test --channel NAME`")
    click.echo(f"Wrote {path}. Uncomment a channel, then {then}.")


@alerts.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def import_file(obj, file: str) -> None:
    """Validate an alerts.toml and make its channels and settings those every proxy alerts with.

    Embedded: copied into the data directory. Shared mode: stored in the shared store, read by every
    replica from its next alert round. Secrets stay in each replica's environment (*_env keys)."""
    text = read_text(file)
    try:
        channels = notify.parse(text, file)
    except notify.ChannelError as exc:
        raise click.ClickException(str(exc)) from None
    stored = config_files.write(obj.home, config_files.ALERTS, text)
    with writing(obj.db) as con:  # the channels, not their settings: a URL or address may be a secret
        audit.record(con, "alerts.import", "config:alerts.toml", None,
                     {"channels": {name: channel.type for name, channel in channels.items()}})
    names = ", ".join(f"{name} ({channel.type})" for name, channel in channels.items()) or "none"
    click.echo(f"Alert channels from {file}, now in {stored.origin}: {names}.")
    inline = [name for name, channel in channels.items() if channel.settings.get("url")]
    if stored.in_shared_store and inline:
        click.echo(f"Note: {', '.join(inline)} keep their URL in the file, so it is stored in the catalog; a URL "
                   f"that is a secret (Slack's) belongs in url_env, set on every replica.", err=True)


@alerts.command("test")
@click.option("--channel", "name", required=True, help="A channel name from alerts.toml.")
@click.pass_obj
def test(obj, name: str) -> None:
    """Send a test message through one channel and record whether it arrived."""
    channels, found = _channels(obj.home)
    if name not in channels:
        known = ", ".join(channels) or f"none: add them to {found.origin}"
        raise click.ClickException(f"No channel named {name!r}; channels: {known}.")
    alert = notify.Alert("test", "AiSpendTrack test alert",
                         f"This is a test from AiSpendTrack ({obj.home}). If you can read it, the "
                         f"{name!r} channel works; budget, quota and spike alerts will arrive the same way.")
    [delivery] = notify.deliver(obj.db, [channels[name]], alert)
    if not delivery.delivered:
        raise click.ClickException(f"Sending to {name} ({delivery.destination}) failed: {delivery.error}")
    click.echo(f"Sent a test alert to {name} ({delivery.destination}).")


@alerts.command("check")
@click.pass_obj
def check(obj) -> None:
    """Evaluate budgets, quota warnings and spikes now and send what is new (the proxy does this every minute).
    Days and months are those of the quota time zone (`aispendtrack config`)."""
    import datetime as dt

    from addon.core import config
    from addon.core.evaluate import evaluate
    from addon.core.store import reading
    for name, channel in _channels(obj.home)[0].items():  # a broken file is an error here, not just a log line
        refused = channel.unusable()
        if refused:
            click.echo(f"Not sending to {name}: {refused}.", err=True)
    with reading(obj.db) as con:
        zone = config.quota_zone(con)
    sent = evaluate(obj.db, obj.home, dt.datetime.now(dt.UTC), zone, on_wait=lambda: click.echo(
        "Another process is sending alerts (the proxy's round, a slow channel?); waiting for it to finish...",
        err=True))
    # What each alert is about (its subject names the scope and the period), not its dedupe key.
    about = "".join(f"\n  {alert.subject.removeprefix('AiSpendTrack: ')}" for alert in sent)
    click.echo(plural(len(sent), "new alert") + (about or "; nothing new to report."))


@alerts.command("list")
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.pass_obj
def list_alerts(obj, fmt: str = "table", as_json: bool = False, limit: int = 50) -> None:
    """What was sent, when, to where, and whether it arrived (newest first)."""
    with reading(obj.db) as con:
        rows = alert_rows.recent(con, limit)
    fmt = "json" if as_json else fmt
    if not rows and fmt == "table":
        channels, _ = _channels(obj.home)
        click.echo("No alerts sent yet." + ("" if channels else (
            " No channels either: `aispendtrack alerts init` writes a commented alerts.toml (email, Slack, "
            "webhook) to fill in, then `aispendtrack alerts test --channel NAME`.")))
        return
    emit(rows, fmt, [
        ("SENT (UTC)", lambda r: r["sent_at"].strftime("%Y-%m-%d %H:%M"), "<"),
        ("KIND", lambda r: r["kind"], "<"), ("CHANNEL", lambda r: r["channel"], "<"),
        ("TO", lambda r: r["destination"], "<"),
        ("DELIVERED", lambda r: "yes" if r["delivered"] else f"no: {r['error']}", "<"),
        ("SUBJECT", lambda r: r["subject"], "<"),
    ])
