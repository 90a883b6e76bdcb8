"""Small helpers shared by several test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from decimal import Decimal

from addon.core.store import calls as call_rows


def call_row(n: int, **changes) -> dict:
    """A stored call's row: ``n`` input tokens, ``n`` seconds after noon on 2026-11-25 UTC."""
    row = {name: None for name in call_rows.COLUMN_NAMES}
    row.update(id=uuid.uuid4(), ts=dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=n),
               key_id=1, provider="openai", endpoint="/v1/chat/completions", model="gpt-4o", stream=False,
               status=200, outcome="completed", input_tokens=n, cache_read_tokens=0, cache_write_tokens=0,
               cache_write_1h_tokens=0, output_tokens=0, reasoning_tokens=0, web_search_requests=0,
               cost_usd=Decimal("0.01"), priced=True, usage_source="reported", customer_id=f"c{n}")
    row.update(changes)
    return row


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True once the other side has closed the connection (EOF or a reset) within ``within`` s."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
