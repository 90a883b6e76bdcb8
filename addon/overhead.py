"""What the proxy adds to a call: the time the call spends in our hooks, stored on its row (``proxy_us``).

``instrument`` wraps the flow hooks of the addons ``make_addons()`` composes, so each hook's wall time
(awaits included: a call waits for them) is added to the flow's ``metadata``; the stream tap counts its
own chunks on the meter (meter.py). The measurement is two ``perf_counter_ns`` calls, a few dict
operations and an int add per hook, and two clock reads per chunk in the tap: no lock, no I/O.
What is and is not counted: docs/architecture.md, "What the proxy adds".
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from time import perf_counter_ns

_SPENT = "aispendtrack.spent_ns"  # flow.metadata: ns in our hooks not yet handed to a meter
_OPEN = "aispendtrack.hook_from_ns"  # flow.metadata: when the hook running now started
# The hooks that run for a call's own flow (not its connection's: TLS, server connects, CONNECT).
FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error",
              "websocket_start", "websocket_message", "websocket_end")


def instrument(addons: list) -> list:
    """Times the flow hooks of ``addons`` (in place); returns them."""
    for addon in addons:
        for name in FLOW_HOOKS:
            hook = getattr(addon, name, None)
            if hook is not None:
                setattr(addon, name, _timed(hook))
    return addons


def _timed(hook: Callable) -> Callable:
    @functools.wraps(hook)
    def timed(flow):
        metadata = flow.metadata
        metadata[_OPEN] = perf_counter_ns()
        try:
            result = hook(flow)
        except BaseException:
            _close(metadata)
            raise
        # An async hook (or one that returns a coroutine): time its awaits too. isawaitable(None) costs
        # microseconds (an ABC check), so the common None is let through first.
        if result is not None and inspect.isawaitable(result):
            return _awaited(result, metadata)
        _close(metadata)
        return result
    return timed


async def _awaited(result: Awaitable, metadata: dict) -> object:
    try:
        return await result
    finally:
        _close(metadata)


def _close(metadata: dict) -> None:
    started = metadata.pop(_OPEN, None)
    if started is not None:
        metadata[_SPENT] = metadata.get(_SPENT, 0) + perf_counter_ns() - started


def take(flow) -> int:
    """The ns this flow has spent in our hooks since the last ``take``, the hook running now included
    up to this moment; the rest of that hook counts towards the next ``take``."""
    metadata = flow.metadata
    now = perf_counter_ns()
    started = metadata.get(_OPEN)
    spent = metadata.pop(_SPENT, 0) + (now - started if started is not None else 0)
    if started is not None:
        metadata[_OPEN] = now
    return spent
