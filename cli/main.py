"""``aispendtrack``: run the proxy, manage keys, see what calls cost.

    aispendtrack proxy --port 8080
    aispendtrack keys create --name backend
    aispendtrack calls --limit 20
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import click

from addon.core import home as home_dir
from addon.core.redact import hide_passwords

# name -> (module in cli/, the command's function). A command's module is imported only when that
# command runs: duckdb and genai-prices take most of a second to import, and `aispendtrack --help`
# needs neither (tests/test_cli_edges.py checks both).
COMMANDS = {
    "admin": ("admin", "admin"), "alerts": ("alerts", "alerts"), "audit": ("audit", "audit"),
    "budgets": ("budgets", "budgets"), "ca": ("ca", "ca"),
    "calls": ("calls", "calls"), "config": ("config", "config"), "export": ("export", "export"),
    "gdpr": ("lifecycle", "gdpr"), "keys": ("keys", "keys"), "migrate-to": ("migrate", "migrate_to"),
    "prices": ("prices", "prices"), "proxy": ("proxy", "proxy"), "purge": ("lifecycle", "purge"),
    "reconcile": ("reconcile", "reconcile"), "report": ("report", "report"), "reprice": ("reprice", "reprice"),
    "teams": ("teams", "teams"), "web": ("web", "web"),
}


@dataclass
class Context:
    given: str | None  # --home (before or after the command: cli/options.py) or $AISPENDTRACK_HOME
    _home: Path | None = None

    @property
    def home(self) -> Path:
        """The data directory, resolved (and created) when a command first needs it: not before a
        --home given after the command is read, which would make the default one too."""
        if self._home is None:
            self._home = home_dir.resolve(self.given)
        return self._home

    def use(self, given: str) -> None:
        self.given, self._home = given, None

    @property
    def db(self) -> Path:
        return home_dir.db_path(self.home)


class _Cli(click.Group):
    """Loads a command when it runs; turns the store's expected failures (file busy, encryption
    misconfigured, shared storage unreachable...) into one-line errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        if name not in self.commands:
            from .options import add_storage_options

            module, attribute = COMMANDS[name]
            command = getattr(importlib.import_module(f"cli.{module}"), attribute)
            add_storage_options(command)
            self.commands[name] = command
        return self.commands[name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click lists them, from the commands' docstrings read without importing their modules."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [(name, click.Command(name, help=_docstring(*COMMANDS[name])).get_short_help_str(limit))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        import duckdb

        from addon.core.store import StoreError

        try:
            return super().invoke(ctx)
        except StoreError as exc:
            raise click.ClickException(hide_passwords(str(exc))) from None
        except duckdb.Error as exc:  # the database failed under the command: a full disk, a damaged block, ...
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise click.ClickException(hide_passwords(f"the database failed: {type(exc).__name__}: {first}")) \
                from None


def _docstring(module: str, function: str) -> str:
    # A regular expression, not ast: parsing every module costs more than importing click.
    source = (Path(__file__).parent / f"{module}.py").read_text(encoding="utf-8")
    found = re.search(rf'^def {function}\(.*?:\n\s+"""(.*?)"""', source, re.MULTILINE | re.DOTALL)
    return inspect.cleandoc(found.group(1)).split("\f")[0] if found else ""


@click.group(cls=_Cli)
@click.option("--home", "home", envvar=home_dir.ENV_VAR, type=click.Path(file_okay=False),
              help="Data directory [env AISPENDTRACK_HOME; default ~/.aispendtrack].")
@click.version_option(package_name="aispendtrack")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """AiSpendTrack: see where your LLM money goes."""
    home_dir.private_files()  # before any command writes a file (an export), whenever it resolves its home
    ctx.obj = Context(home)
