"""What the proxy's addons share: the keys, limits and budgets the writer thread refreshes from
the database every ~2 s, the providers, and the data directory.

Each addon (gate.py, quotas.py, aispendtrack.py) gets the same instance; the request hook of one
hands the call to the next in ``flow.metadata`` (see ``Admission``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import ctx

from .core import home as home_dir
from .core import periods
from .core.budgets import BudgetTracker
from .core.keys import KeyRing
from .core.limits import Limiter
from .providers import Provider, all_providers

if TYPE_CHECKING:
    from .shared_counters import SharedCounters

ADMITTED = "aispendtrack.admitted"  # flow.metadata key of an Admission


@dataclass(frozen=True)
class Admission:
    """A call the gate let through: for whom, to which provider and path."""

    provider: Provider
    path: str  # the provider's path, canonical and without a routing prefix
    key_id: int
    customer_id: str | None
    feature: str | None


@dataclass
class ProxyState:
    keyring: KeyRing = field(default_factory=KeyRing)
    # Replaced when the proxy starts, in the stored quota time zone (quotas.py).
    limiter: Limiter = field(default_factory=lambda: Limiter(periods.UTC))
    budgets: BudgetTracker = field(default_factory=lambda: BudgetTracker(periods.UTC))
    # Replaced when the proxy starts by providers that can count tokens (aispendtrack.py).
    providers: list[Provider] = field(default_factory=lambda: all_providers(None))
    home: Path | None = None
    # Shared mode only (shared_counters.py): limits and budgets over all replicas.
    counters: SharedCounters | None = None
    # A stop closes the client connections (cli/proxy.py): the calls and realtime sessions they
    # carried were cut by it, not by their clients leaving.
    cutting: bool = False

    def data_home(self) -> Path:
        """The data directory, from the aispendtrack_home option (resolved once)."""
        if self.home is None:
            self.home = home_dir.resolve(ctx.options.aispendtrack_home or None)
        return self.home
